"""One job → the provider call for its kind, with the worker's identity rewrites.

Each handler returns the final JSON body (empty for streams) and the usage to
account; streamed chunks go out through `emit` as they come. The worker, not
the adapter, sets `id`, `model` (the public name) and `created`, so a client
sees one consistent identity whatever the upstream sends.

Every handler reports to the job's Meter (workers/meter.py) what the provider said it used
and what output went by.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from broker.errors import InvalidRequest
from broker.queue.jobs import Job
from broker.queue.payloads import (
    ChatPayload,
    CompletionPayload,
    CountTokensPayload,
    EmbeddingPayload,
    MessagesPayload,
    Payload,
    RerankPayload,
    ResponsesPayload,
)
from broker.wire import (
    ChatChunk,
    ChatRequest,
    CompletionRequest,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    TextCompletion,
    Usage,
    encode_embedding,
    json_encoder,
)
from broker.queue.payloads import ImagePayload, ModerationPayload, SpeechPayload, TranscriptionPayload
from workers import media, messages, rerank, responses
from workers.meter import Meter
from workers.providers import EmbeddingsProvider, Provider, TextCompletionProvider

Emit = Callable[[bytes], None]
Outcome = tuple[bytes, Usage | None]


Handler = Callable[[Provider, Job, Any, Emit, Meter], Awaitable[Outcome]]
P = TypeVar("P", ChatPayload, CompletionPayload, CountTokensPayload, EmbeddingPayload, MessagesPayload,
            ResponsesPayload, ImagePayload, ModerationPayload, TranscriptionPayload, SpeechPayload, RerankPayload)
# Payload type → its handler. A new endpoint registers its handler here with @handles.
HANDLERS: dict[type[Payload], Handler] = {}


def handles(kind: type[P]) -> Callable[[Callable[[Provider, Job, P, Emit, Meter], Awaitable[Outcome]]],
                                       Callable[[Provider, Job, P, Emit, Meter], Awaitable[Outcome]]]:
    """Register the decorated function as the handler of payloads of type `kind`."""
    def register(handler: Callable[[Provider, Job, P, Emit, Meter], Awaitable[Outcome]]
                 ) -> Callable[[Provider, Job, P, Emit, Meter], Awaitable[Outcome]]:
        HANDLERS[kind] = handler
        return handler
    return register


async def serve(provider: Provider, job: Job, emit: Emit, meter: Meter) -> Outcome:
    return await HANDLERS[type(job.payload)](provider, job, job.payload, emit, meter)


@handles(ChatPayload)
async def _serve_chat(provider: Provider, job: Job, payload: ChatPayload, emit: Emit, meter: Meter) -> Outcome:
    if payload.streams:
        return b"", await _chat_stream(provider, job, payload.request, emit, meter)
    return await _chat(provider, job, payload.request, meter)


@handles(CompletionPayload)
async def _serve_completion(provider: Provider, job: Job, payload: CompletionPayload, emit: Emit,
                            meter: Meter) -> Outcome:
    if not isinstance(provider, TextCompletionProvider):
        raise InvalidRequest(f"provider {job.provider!r} has no legacy completions endpoint", param="model")
    if payload.streams:
        return b"", await _text_stream(provider, job, payload.request, emit, meter)
    return await _text(provider, job, payload.request, meter)


@handles(EmbeddingPayload)
async def _serve_embeddings(provider: Provider, job: Job, payload: EmbeddingPayload, emit: Emit,
                            meter: Meter) -> Outcome:
    if not isinstance(provider, EmbeddingsProvider):
        raise InvalidRequest(f"provider {job.provider!r} has no embeddings endpoint", param="model")
    return await _embeddings(provider, job, payload.request, meter)


# The inbound protocols' handlers live in their own modules (workers/messages.py, workers/responses.py).
handles(MessagesPayload)(messages.serve)
handles(CountTokensPayload)(messages.count_tokens)
handles(ResponsesPayload)(responses.serve)
# OpenAI's media endpoints (workers/media.py).
handles(ImagePayload)(media.images)
handles(ModerationPayload)(media.moderations)
handles(TranscriptionPayload)(media.transcriptions)
handles(SpeechPayload)(media.speech)
handles(RerankPayload)(rerank.serve)  # workers/rerank.py


async def _chat(provider: Provider, job: Job, req: ChatRequest, meter: Meter) -> Outcome:
    result = await provider.complete(req, model=job.upstream_model, deadline=job.deadline)
    result = msgspec.structs.replace(result, id=f"chatcmpl-{job.id}", model=job.model, created=int(job.created))
    usage = meter.answered(result)  # first: it puts the cost on the usage the body carries
    return json_encoder.encode(result), usage


async def _chat_stream(provider: Provider, job: Job, req: ChatRequest, emit: Emit, meter: Meter) -> Usage | None:
    chunks = provider.stream(req, model=job.upstream_model, deadline=job.deadline)
    return await _relay(chunks, job, f"chatcmpl-{job.id}", req.wants_usage_chunk(), emit, meter,
                        lambda cid, usage: ChatChunk(cid, int(job.created), job.model, [], usage=usage))


C = TypeVar("C", ChatChunk, TextCompletion)


async def _relay(chunks: AsyncIterator[C], job: Job, completion_id: str, wants_usage: bool, emit: Emit,
                 meter: Meter, usage_chunk: Callable[[str, Usage], C]) -> Usage | None:
    """Forward a stream's chunks under our identity; usage goes last, on its own, if asked for."""
    usage: Usage | None = None
    created = int(job.created)
    async for chunk in chunks:
        # Usage may come alone (OpenAI) or on the last content chunk (e.g. Mistral);
        # the client gets it the OpenAI way: one chunk with no choices, at the end.
        if isinstance(chunk.usage, Usage):
            usage = chunk.usage
        if not chunk.choices:
            continue
        meter.saw(chunk)
        # OpenAI sends "usage": null on every chunk once include_usage is on.
        chunk.usage = None if wants_usage else msgspec.UNSET
        chunk.id, chunk.model, chunk.created = completion_id, job.model, created
        emit(json_encoder.encode(chunk))
    if usage is not None:
        meter.stamp(usage)
        if wants_usage:
            emit(json_encoder.encode(usage_chunk(completion_id, usage)))
    return usage


async def _text(provider: TextCompletionProvider, job: Job, req: CompletionRequest, meter: Meter) -> Outcome:
    result = await provider.complete_text(req, model=job.upstream_model, deadline=job.deadline)
    result = msgspec.structs.replace(result, id=f"cmpl-{job.id}", model=job.model, created=int(job.created))
    usage = meter.stamp(result.usage) if isinstance(result.usage, Usage) else None
    if usage is None:
        meter.saw(result)
    return json_encoder.encode(result), usage


async def _text_stream(provider: TextCompletionProvider, job: Job, req: CompletionRequest, emit: Emit,
                       meter: Meter) -> Usage | None:
    chunks = provider.stream_text(req, model=job.upstream_model, deadline=job.deadline)
    return await _relay(chunks, job, f"cmpl-{job.id}", req.wants_usage_chunk(), emit, meter,
                        lambda cid, usage: TextCompletion(cid, int(job.created), job.model, [], usage=usage))


async def _embeddings(provider: EmbeddingsProvider, job: Job, req: EmbeddingRequest, meter: Meter) -> Outcome:
    result = await provider.embed(req, model=job.upstream_model, deadline=job.deadline)
    data = [Embedding(i, encode_embedding(v, req.encoding_format)) for i, v in enumerate(result.vectors)]
    usage = meter.stamp(Usage(result.prompt_tokens, 0, result.prompt_tokens))
    body = json_encoder.encode(EmbeddingResponse(data, job.model, EmbeddingUsage(
        result.prompt_tokens, result.prompt_tokens, cost=usage.cost)))
    return body, usage
