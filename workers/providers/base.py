"""The provider seam: what a worker needs from an upstream, and nothing more.

An adapter receives the client's OpenAI-shaped request (already validated, and
only if its deployment has every capability the request needs: see
broker/routing/capabilities.py) and the upstream model id, and returns OpenAI-shaped
results. Translation to and from the upstream's own protocol lives in the
adapter's module as pure functions; the adapter wires the shared HTTP client
(workers/providers/http.py) to them. Adapters raise only
`broker.errors.BrokerError`s (mostly `UpstreamError`), so the worker loop never
sees a foreign exception.

The worker owns identity: it rewrites `id`, `model` and `created` on whatever
the adapter returns, so adapters need not care what the client will see.

Optional operations are separate small protocols: a provider without embeddings
simply does not implement `EmbeddingsProvider`. Routing sends an embeddings or
legacy completions job only to a deployment whose capabilities say it serves one
(the provider kind's defaults, its profile, the deployment's overrides:
broker/routing/capabilities.py); should one arrive anyway (a deployment that
claims `embeddings: true` for an adapter without `embed`), the worker checks the
protocol on that job (`isinstance`, workers/handlers.py `serve`) and answers it
400 rather than calling a method that is not there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

import msgspec

from broker.wire import (
    ChatChunk,
    ChatCompletion,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    TextCompletion,
)
from broker.wire.audio import SpeechRequest, TranscriptionRequest
from broker.wire.images import ImageRequest
from broker.wire.moderations import ModerationRequest
from broker.wire.rerank import RerankRequest
from workers.providers.sse import SSEEvent


@runtime_checkable
class Provider(Protocol):
    async def complete(self, req: ChatRequest, *, model: str, deadline: float) -> ChatCompletion:
        """One non-streaming completion. `deadline` is unix seconds."""
        ...

    def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        """Chunks in order; a usage chunk (no choices) last when the upstream reports usage."""
        ...

    async def aclose(self) -> None: ...


class EmbeddingsResult(msgspec.Struct):
    vectors: list[list[float]]  # one per input, in input order
    prompt_tokens: int


@runtime_checkable
class EmbeddingsProvider(Protocol):
    async def embed(self, req: EmbeddingRequest, *, model: str, deadline: float) -> EmbeddingsResult:
        """Float vectors; the worker applies `encoding_format`."""
        ...


class Ranked(msgspec.Struct):
    """A rerank's scores: `(document index, relevance score)` for some or all documents, in any order (the
    worker sorts, cuts to `top_n` and attaches documents), and what the upstream said it used, if it did."""

    scores: list[tuple[int, float]]
    prompt_tokens: int | None = None
    search_units: int | None = None


@runtime_checkable
class RerankProvider(Protocol):
    """POST /v1/rerank: Cohere's /v2/rerank, an OpenAI-compatible server's /rerank (vLLM, Infinity), the mock.
    Bedrock's Cohere Rerank fits the same method (InvokeModel with `query`, `documents`, `top_n`)."""

    async def rerank(self, req: RerankRequest, *, model: str, deadline: float) -> Ranked: ...


@runtime_checkable
class TextCompletionProvider(Protocol):
    """Legacy /v1/completions: raw prompt continuation, no chat template."""

    async def complete_text(self, req: CompletionRequest, *, model: str, deadline: float) -> TextCompletion: ...

    def stream_text(self, req: CompletionRequest, *, model: str, deadline: float) -> AsyncIterator[TextCompletion]:
        ...


@runtime_checkable
class MessagesProvider(Protocol):
    """Anthropic's Messages API spoken natively: a /v1/messages job's body goes up as the client sent
    it and the answer comes back as the upstream wrote it (workers/messages.py), so thinking
    signatures, cache_control markers and beta features survive the trip."""

    async def relay_messages(self, body: bytes, *, beta: str, deadline: float) -> bytes:
        """The upstream's Message JSON for a non-streaming `body`, as received."""
        ...

    async def relay_count_tokens(self, body: bytes, *, beta: str, deadline: float) -> bytes:
        """The upstream's `{"input_tokens": N}` for a count_tokens `body`, as received."""
        ...

    def relay_message_events(self, body: bytes, *, beta: str, deadline: float) -> AsyncIterator[SSEEvent]:
        """The upstream's SSE events for a streaming `body`, as received, through `message_stop`."""
        ...


@runtime_checkable
class ResponsesProvider(Protocol):
    """OpenAI's Responses API spoken natively, when its settings say the upstream serves it
    (`speaks_responses`): a /v1/responses job's body goes up nearly as the client sent it and the answer
    comes back as the upstream wrote it (workers/responses.py), so built-in tools and encrypted
    reasoning survive the trip."""

    speaks_responses: bool

    async def relay_responses(self, body: bytes, *, deadline: float) -> bytes:
        """The upstream's Response JSON for a non-streaming `body`, as received."""
        ...

    def relay_response_events(self, body: bytes, *, deadline: float) -> AsyncIterator[SSEEvent]:
        """The upstream's SSE events for a streaming `body`, as received, through its last."""
        ...


# ---- OpenAI's media endpoints (workers/media.py). Each returns the upstream's answer in OpenAI's
# shape, as received: the worker reads from it only what it bills.


@runtime_checkable
class ImagesProvider(Protocol):
    async def generate_images(self, req: ImageRequest, body: bytes, *, model: str, deadline: float) -> bytes:
        """An ImagesResponse JSON for the client's JSON `body` (its `model` is to be `model`)."""
        ...


@runtime_checkable
class ModerationsProvider(Protocol):
    async def moderate(self, req: ModerationRequest, body: bytes, *, model: str, deadline: float) -> bytes:
        """A moderation JSON (`id`, `model`, `results`) for the client's JSON `body`."""
        ...


class Transcribed(msgspec.Struct):
    body: bytes  # in the request's response_format
    seconds: float | None = None  # of audio, when the upstream said
    tokens: tuple[int, int] | None = None  # (input, output), when the upstream reported tokens


@runtime_checkable
class TranscriptionsProvider(Protocol):
    async def transcribe(self, req: TranscriptionRequest, *, model: str, deadline: float) -> Transcribed:
        """The transcript (or translation) of the audio at `req.file.path`, read from there, not memory."""
        ...


@runtime_checkable
class SpeechProvider(Protocol):
    def speak(self, req: SpeechRequest, body: bytes, *, model: str, deadline: float) -> AsyncIterator[bytes]:
        """The audio in `req.response_format`, in pieces as they arrive (a bounded amount in memory)."""
        ...
