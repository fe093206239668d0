"""Serving a /v1/messages job: relayed to an Anthropic deployment as received, translated for any other.

Relayed: the client's body goes up with only its `model` swapped for the deployment's, and the answer
comes back with only its `model` swapped for the public name. Every other value keeps its bytes, so
thinking signatures (which Anthropic checks on the next turn), cache_control markers (a prompt-cache
prefix match is byte-exact) and beta features survive; the usage is read from a parsed copy
(https://docs.anthropic.com/en/docs/build-with-claude/streaming: message_start carries the input
counts, message_delta the cumulative output).

Translated: the job's Chat Completions form goes to the provider like any chat job, and its answer
becomes a Message, or a stream of Anthropic events (broker/inbound/).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from broker.inbound.messages import to_message
from broker.inbound.messages_stream import MessagesStream
from broker.queue.jobs import Job
from broker.queue.payloads import CountTokensPayload, MessagesPayload
from broker.routing.capabilities import estimate_tokens
from broker.wire import Usage
from broker.wire.messages import ErrorDetail, TokenCount
from broker.wire.messages import Usage as MessagesUsage
from broker.wire.messages import encoder as messages_encoder
from workers.meter import Meter
from workers.providers import Provider
from workers.providers.anthropic_stream import error_from_event
from workers.providers.anthropic_wire import event_decoder, response_decoder
from workers.providers.base import MessagesProvider

Emit = Callable[[bytes], None]  # as workers/handlers.py's, which registers `serve` and `count_tokens`
Outcome = tuple[bytes, Usage | None]
_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encoder = msgspec.json.Encoder()


def with_model(body: bytes, model: str) -> bytes:
    """`body`, a JSON object, with its top-level `model` set to `model` and every other value kept byte
    for byte (msgspec.Raw), in the order received."""
    fields = _fields.decode(body)
    fields["model"] = msgspec.Raw(_encoder.encode(model))
    return _encoder.encode(fields)


def _message_start_with_model(data: bytes, model: str) -> bytes:
    fields = _fields.decode(data)
    if "message" in fields:
        fields["message"] = msgspec.Raw(with_model(bytes(fields["message"]), model))
    return _encoder.encode(fields)


async def relay(provider: MessagesProvider, job: Job, payload: MessagesPayload, emit: Emit, meter: Meter) -> Outcome:
    body = with_model(payload.body, job.upstream_model)
    if not payload.streams:
        answer = await provider.relay_messages(body, beta=payload.beta, deadline=job.deadline)
        meter.responded = True
        return with_model(answer, job.model), meter.stamp(response_decoder.decode(answer).usage.to_chat())
    usage = MessagesUsage()
    async for event in provider.relay_message_events(body, beta=payload.beta, deadline=job.deadline):
        if event.event == "ping":  # the API keeps the client's connection alive itself
            continue
        parsed = event_decoder.decode(event.data)
        if parsed.type == "error":
            # Before the first event this fails over like any failed call; after it, the API ends the
            # stream with an `event: error` of the same type.
            raise error_from_event(parsed.error or ErrorDetail())
        data = event.data
        if parsed.type == "message_start":
            meter.responded = True
            usage = usage.merged(parsed.message.usage if parsed.message else None)
            data = _message_start_with_model(data, job.model)
        elif parsed.type == "message_delta":
            usage = usage.merged(parsed.usage)
        elif parsed.type == "content_block_delta" and parsed.delta is not None:
            meter.output_chars += len(parsed.delta.text) + len(parsed.delta.partial_json)
        emit(b"event: %s\ndata: %s\n\n" % ((event.event or parsed.type).encode(), data))
    return b"", meter.stamp(usage.to_chat())


async def serve(provider: Provider, job: Job, payload: MessagesPayload, emit: Emit, meter: Meter) -> Outcome:
    if isinstance(provider, MessagesProvider):  # Anthropic itself: the client's bytes go up as they are
        return await relay(provider, job, payload, emit, meter)
    return await translated(provider, job, payload, emit, meter)


async def count_tokens(provider: Provider, job: Job, payload: CountTokensPayload, emit: Emit, meter: Meter) -> Outcome:
    """Anthropic counts with its own tokenizer; any other deployment gets admission's estimate. Nothing is
    billed: the meter is told so, or the worker would charge the prompt's estimate of an unanswered call."""
    meter.stamp(Usage(0, 0, 0))
    if isinstance(provider, MessagesProvider):
        body = with_model(payload.body, job.upstream_model)
        return await provider.relay_count_tokens(body, beta=payload.beta, deadline=job.deadline), None
    return messages_encoder.encode(TokenCount(estimate_tokens(payload.request))), None


async def translated(provider: Provider, job: Job, payload: MessagesPayload, emit: Emit, meter: Meter) -> Outcome:
    message_id = f"msg_{job.id}"
    if not payload.streams:
        result = await provider.complete(payload.request, model=job.upstream_model, deadline=job.deadline)
        usage = meter.answered(result)
        return messages_encoder.encode(to_message(result, model=job.model, message_id=message_id)), usage
    stream = MessagesStream(job.model, message_id)
    reported: Usage | None = None
    async for chunk in provider.stream(payload.request, model=job.upstream_model, deadline=job.deadline):
        if isinstance(chunk.usage, Usage):
            reported = chunk.usage
        if chunk.choices:
            meter.saw(chunk)
        for event in stream.on_chunk(chunk):
            emit(event)
    if reported is not None:
        meter.stamp(reported)
    for event in stream.finish(reported):
        emit(event)
    return b"", reported
