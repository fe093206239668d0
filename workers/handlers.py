"""One job → the provider call for its kind, with the worker's identity rewrites.

Each handler returns the final JSON body (empty for streams) and the usage to
account; streamed chunks go out through `emit` as they come. The worker, not
the adapter, sets `id`, `model` (the public name) and `created`, so a client
sees one consistent identity whatever the upstream sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import msgspec

from broker.errors import InvalidRequest
from broker.jobs import Job
from broker.wire import (
    ChatChunk, ChatRequest, CompletionRequest, Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage,
    TextCompletion, Usage, encode_embedding, json_encoder,
)
from workers.providers import EmbeddingsProvider, Provider, TextCompletionProvider

Emit = Callable[[bytes], None]
Outcome = tuple[bytes, Usage | None]


async def serve(provider: Provider, job: Job, emit: Emit) -> Outcome:
    if job.request is not None:
        if job.request.stream:
            return b"", await _chat_stream(provider, job, job.request, emit)
        return await _chat(provider, job, job.request)
    if job.completion is not None:
        if not isinstance(provider, TextCompletionProvider):
            raise InvalidRequest(f"provider {job.provider!r} has no legacy completions endpoint", param="model")
        if job.completion.stream:
            return b"", await _text_stream(provider, job, job.completion, emit)
        return await _text(provider, job, job.completion)
    if job.embedding is not None:
        if not isinstance(provider, EmbeddingsProvider):
            raise InvalidRequest(f"provider {job.provider!r} has no embeddings endpoint", param="model")
        return await _embeddings(provider, job, job.embedding)
    raise InvalidRequest("the job carries no request")


async def _chat(provider: Provider, job: Job, req: ChatRequest) -> Outcome:
    result = await provider.complete(req, model=job.upstream_model, deadline=job.deadline)
    result = msgspec.structs.replace(result, id=f"chatcmpl-{job.id}", model=job.model, created=int(job.created))
    return json_encoder.encode(result), result.usage


async def _chat_stream(provider: Provider, job: Job, req: ChatRequest, emit: Emit) -> Usage | None:
    chunks = provider.stream(req, model=job.upstream_model, deadline=job.deadline)
    return await _relay(chunks, job, f"chatcmpl-{job.id}", req.wants_usage_chunk(), emit,
                        lambda cid, usage: ChatChunk(cid, int(job.created), job.model, [], usage=usage))


C = TypeVar("C", ChatChunk, TextCompletion)


async def _relay(chunks: AsyncIterator[C], job: Job, completion_id: str, wants_usage: bool, emit: Emit,
                 usage_chunk: Callable[[str, Usage], C]) -> Usage | None:
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
        # OpenAI sends "usage": null on every chunk once include_usage is on.
        chunk.usage = None if wants_usage else msgspec.UNSET
        chunk.id, chunk.model, chunk.created = completion_id, job.model, created
        emit(json_encoder.encode(chunk))
    if wants_usage and usage is not None:
        emit(json_encoder.encode(usage_chunk(completion_id, usage)))
    return usage


async def _text(provider: TextCompletionProvider, job: Job, req: CompletionRequest) -> Outcome:
    result = await provider.complete_text(req, model=job.upstream_model, deadline=job.deadline)
    result = msgspec.structs.replace(result, id=f"cmpl-{job.id}", model=job.model, created=int(job.created))
    usage = result.usage if isinstance(result.usage, Usage) else None
    return json_encoder.encode(result), usage


async def _text_stream(provider: TextCompletionProvider, job: Job, req: CompletionRequest, emit: Emit) -> Usage | None:
    chunks = provider.stream_text(req, model=job.upstream_model, deadline=job.deadline)
    return await _relay(chunks, job, f"cmpl-{job.id}", req.wants_usage_chunk(), emit,
                        lambda cid, usage: TextCompletion(cid, int(job.created), job.model, [], usage=usage))


async def _embeddings(provider: EmbeddingsProvider, job: Job, req: EmbeddingRequest) -> Outcome:
    result = await provider.embed(req, model=job.upstream_model, deadline=job.deadline)
    data = [Embedding(i, encode_embedding(v, req.encoding_format)) for i, v in enumerate(result.vectors)]
    usage = EmbeddingUsage(result.prompt_tokens, result.prompt_tokens)
    body = json_encoder.encode(EmbeddingResponse(data, job.model, usage))
    return body, Usage(result.prompt_tokens, 0, result.prompt_tokens)
