"""Serving a /v1/responses job: relayed to a deployment that speaks the Responses API, translated for any other.

Relayed (`relay`): the body goes up as the client sent it, but for what is ours alone, and the answer
comes back as the upstream wrote it, but for what the client must see as ours (both:
broker/inbound/responses_native.py). Usage is read from a parsed copy. The upstream's opening events
wait for its first answering one, as the translated stream's do, so a failure before it still fails
over (to a translated deployment as well, the client seeing no difference).

Translated (`translated`): the provider answers its Chat form; the answer becomes a Response.
Translation is broker/inbound/responses.py's. A stream's opening events (`response.created`,
`response.in_progress`) go out with the first chunk's, not before the upstream answered: until a
first event is sent, a failed call still fails over to the next deployment unseen. Its closing
events (the completed Response) are held back as the job's final body: the API stores the response
before its client sees it complete (api/responses_store.py).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from broker.errors import BrokerError, InvalidRequest, UpstreamError
from broker.ops.redaction import redact
from broker.inbound import responses_native as native
from broker.inbound.responses_output import to_response
from broker.inbound.responses_stream import ResponsesStream
from broker.queue.jobs import Job
from broker.queue.payloads import ResponsesPayload
from broker.wire import Usage
from broker.wire.responses import encoder, responses_request_decoder
from workers.messages import with_model
from workers.meter import Meter
from workers.providers import Provider
from workers.providers.base import ResponsesProvider

Emit = Callable[[bytes], None]  # as workers/handlers.py's, which registers `serve`
Outcome = tuple[bytes, Usage | None]


async def serve(provider: Provider, job: Job, payload: ResponsesPayload, emit: Emit, meter: Meter) -> Outcome:
    if isinstance(provider, ResponsesProvider) and provider.speaks_responses:
        return await relay(provider, job, payload, emit, meter)
    if payload.native_only:  # routing sends it only where it can be served: a deployment changed under it
        raise InvalidRequest(f"The model `{job.model}` has no deployment that speaks the Responses API now, which "
                             "this request needs (built-in tools or OpenAI's own items).", param="tools")
    return await translated(provider, job, payload, emit, meter)


_OPENING = frozenset({"response.created", "response.in_progress", "response.queued"})
_ENDS = frozenset({"response.completed", "response.incomplete"})


async def relay(provider: ResponsesProvider, job: Job, payload: ResponsesPayload, emit: Emit,
                meter: Meter) -> Outcome:
    body = with_model(payload.native or payload.body, job.upstream_model)
    identity = native.Identity.of(payload.body, payload.response_id, job.model)
    if not payload.streams:
        answer = await provider.relay_responses(body, deadline=job.deadline)
        meter.responded = True
        answered = native.read(answer)
        if answered.status == "failed":
            raise _failure(answered.error)
        usage = meter.stamp(answered.usage.to_chat()) if answered.usage is not None else None
        return identity.response(answer, usage), usage
    opening: list[bytes] = []
    latest = b""  # the Response as the upstream last showed it: what a failure's `response.failed` carries
    async for event in provider.relay_response_events(body, deadline=job.deadline):
        parsed = native.read_event(event.data)
        if parsed.response != native.NULL:
            latest = bytes(parsed.response)
        if parsed.type in _OPENING:
            opening.append(_frame(parsed.type, identity.event(event.data)))
            continue
        if parsed.type in ("error", "response.failed"):
            failure = _failure(parsed.error or {"code": parsed.code, "message": parsed.message})
            if opening or not meter.responded:  # nothing sent yet: it fails over like any failed call
                raise failure
            if parsed.type == "error":  # the spec's pair: the error, then the Response, failed
                emit(_frame("error", event.data))
                failed = identity.response(latest or b"{}", status="failed", error={
                    "code": failure.code or "server_error", "message": failure.message})
                emit(_frame("response.failed", encoder.encode(
                    {"type": "response.failed", "sequence_number": parsed.sequence_number + 1,
                     "response": msgspec.Raw(failed)})))
            else:
                emit(_frame(parsed.type, identity.event(event.data)))
            raise failure
        meter.responded = True
        for held in opening:
            emit(held)
        opening = []
        if parsed.type in _ENDS:  # held back as the job's final body: the API stores it before its client sees it
            answered = native.read(parsed.response)
            usage = meter.stamp(answered.usage.to_chat()) if answered.usage is not None else None
            return _frame(parsed.type, identity.event(event.data, usage)), usage
        if isinstance(parsed.delta, str):
            meter.output_chars += len(parsed.delta)
        emit(_frame(parsed.type, event.data))
    raise UpstreamError("the upstream ended the stream before the response did", retryable=True)


def _frame(kind: str, data: bytes) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), data)


def _failure(error: dict[str, object] | None) -> UpstreamError:
    """The upstream's own report of a failed response: retried and failed over as a 5xx, a 429 if it says so."""
    error = error or {}
    code, message = str(error.get("code") or "server_error"), str(error.get("message") or "the upstream failed")
    status = 429 if code == "rate_limit_exceeded" else 400 if code == "context_length_exceeded" else 500
    return UpstreamError.for_status(status, f"upstream error ({code}): {redact(message)}", code=code)


async def translated(provider: Provider, job: Job, payload: ResponsesPayload, emit: Emit, meter: Meter) -> Outcome:
    request = responses_request_decoder.decode(payload.body)
    created = int(job.created)
    if not payload.streams:
        result = await provider.complete(payload.request, model=job.upstream_model, deadline=job.deadline)
        usage = meter.answered(result)
        response = to_response(result, request, response_id=payload.response_id, created_at=created)
        return encoder.encode(response), usage
    stream = ResponsesStream(request, payload.response_id, created)
    opening = stream.start()
    reported: Usage | None = None
    try:
        async for chunk in provider.stream(payload.request, model=job.upstream_model, deadline=job.deadline):
            if isinstance(chunk.usage, Usage):
                reported = chunk.usage
            if chunk.choices:
                meter.saw(chunk)
            events = stream.on_chunk(chunk)
            if events:
                if opening:
                    for event in opening:
                        emit(event)
                    opening = []
                for event in events:
                    emit(event)
    except BrokerError as failure:
        if not opening:  # past the first event: the stream says it failed, then the error goes on as usual
            for event in stream.failed(failure.code or failure.type, failure.message, error_type=failure.type):
                emit(event)
        raise
    if reported is not None:
        meter.stamp(reported)
    return b"".join([*opening, *stream.finish(reported)]), reported
