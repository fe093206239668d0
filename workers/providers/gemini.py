"""Google Gemini (Developer API, v1beta): chat through generateContent, embeddings through batchEmbedContents.

Translation lives in gemini_translate.py (requests, responses) and
gemini_stream.py (SSE events → chunks); this module wires the shared HTTP
client to them and maps Google's errors where they enter. The key goes in the
`x-goog-api-key` header, never in the URL, so it cannot end up in a log line.
`GenerateContent` is the part any Google host shares: Vertex AI (vertex.py) reuses it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping

import msgspec
from msgspec import UNSET

from broker.config import GeminiProvider as GeminiConfig
from broker.errors import InvalidRequest, UpstreamError, redact
from broker.wire import ChatChunk, ChatCompletion, ChatRequest, EmbeddingRequest
from workers.providers import gemini_wire as g
from workers.providers.base import EmbeddingsResult
from workers.providers.gemini_stream import StreamState, on_end, on_event
from workers.providers.gemini_translate import from_upstream, to_upstream
from workers.providers.http import UpstreamHTTP
from workers.providers.sse import SSEParser

# batchEmbedContents takes at most 100 requests; OpenAI clients may send 2048 inputs.
EMBED_BATCH = 100


def model_path(model: str) -> str:
    """`gemini-2.5-flash` → `models/gemini-2.5-flash`; `tunedModels/x` and `models/x` stay as they are."""
    return model if "/" in model else f"models/{model}"


# ---------------------------------------------------------------- errors


def error_from_response(status: int, body: bytes, headers: Mapping[str, str], *,
                        upstream: str = "Gemini") -> UpstreamError:
    """Google's `{"error": {code, message, status, details}}` → the broker's error for that status."""
    message, retry_after = f"HTTP {status}", None
    label = str(status)
    try:
        error = g.error_decoder.decode(body).error
    except msgspec.DecodeError:
        error = None
    if error is not None:
        message = error.message or message
        label = f"{status} {error.status}" if error.status else label
        for detail in error.details:
            if detail.retry_delay and detail.retry_delay.endswith("s"):
                retry_after = _float(detail.retry_delay[:-1])  # RetryInfo: a Duration like "26s"
            if detail.reason == "API_KEY_INVALID":
                status = 401  # Google answers 400, but a bad key is our misconfiguration: 502, not the client's 400
    if retry_after is None:
        retry_after = _float(headers.get("retry-after"))
    return UpstreamError.for_status(
        status, f"{upstream} error ({label}): {redact(message)}",
        code="rate_limit_exceeded" if status == 429 else None, retry_after_s=retry_after,
    )


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------- embeddings


def to_embed_request(texts: list[str], *, model: str, dimensions: int | None) -> bytes:
    path = model_path(model)
    return g.encoder.encode(g.BatchEmbedContentsRequest(requests=[
        g.EmbedContentRequest(model=path, content=g.Content(parts=[g.Part(text=t)]),
                              output_dimensionality=dimensions if dimensions is not None else UNSET)
        for t in texts
    ]))


def from_embed_response(data: bytes, expected: int) -> list[list[float]]:
    try:
        embeddings = g.embed_response_decoder.decode(data).embeddings
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"Gemini sent invalid embeddings: {exc}", retryable=True) from None
    if len(embeddings) != expected:
        raise UpstreamError(f"Gemini returned {len(embeddings)} embeddings for {expected} inputs", retryable=True)
    return [e.values for e in embeddings]


def estimate_tokens(texts: list[str]) -> int:
    """batchEmbedContents reports no usage, so bill ~4 characters a token (the ratio Google documents for
    Gemini, and the one broker/routing/capabilities.py uses): a countTokens call per request would double latency."""
    return sum(max(1, math.ceil(len(t) / 4)) for t in texts)


# ---------------------------------------------------------------- adapters


class GenerateContent:
    """Gemini's generateContent over some Google host: the Developer API below, Vertex AI in vertex.py.

    The hosts differ only in where a model's methods live (`_path`) and how a call is authorised
    (`_auth`); the translation and the error mapping are the same.
    """

    upstream = "Gemini"  # how error messages name the upstream

    def __init__(self, name: str, http: UpstreamHTTP, *, secret: str = "") -> None:
        self.name = name
        self._http = http
        self._secret = secret  # never to be echoed back in an error message

    def _path(self, model: str, method: str) -> str:
        raise NotImplementedError

    async def _auth(self) -> Mapping[str, str] | None:
        """Headers of this call alone (a bearer token that changes); None: the client's own will do."""
        return None

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        err = error_from_response(status, body, headers, upstream=self.upstream)
        if self._secret and self._secret in err.message:  # Google echoes keys in some messages ("Consumer 'api_key:…'")
            err.message = err.message.replace(self._secret, "***")
            err.args = (err.message,)
        return err

    async def complete(self, req: ChatRequest, *, model: str, deadline: float) -> ChatCompletion:
        body = to_upstream(req)
        async with self._http.post(self._path(model, "generateContent"), body, deadline=deadline,
                                   headers=await self._auth()) as resp:
            content = await resp.read()
        if resp.status >= 400:
            raise self._error(resp.status, content, resp.headers)
        return from_upstream(content, model=model)

    async def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        body = to_upstream(req)
        path = self._path(model, "streamGenerateContent") + "?alt=sse"
        async with self._http.post(path, body, deadline=deadline, headers=await self._auth()) as resp:
            if resp.status >= 400:
                raise self._error(resp.status, await resp.read(), resp.headers)
            parser, state = SSEParser(), StreamState(model)
            async for raw in resp.iter_chunks():
                for event in parser.feed(raw):
                    for chunk in on_event(event.data, state):
                        yield chunk
        for chunk in on_end(state):
            yield chunk

    async def aclose(self) -> None:
        await self._http.aclose()


class GeminiGenerateContent(GenerateContent):
    """The Developer API (generativelanguage.googleapis.com): an API key, and embeddings too."""

    def __init__(self, name: str, config: GeminiConfig) -> None:
        self.config = config
        headers = dict(config.headers)
        key = config.api_key.reveal() if config.api_key else ""
        if key:
            headers["x-goog-api-key"] = key
        super().__init__(name, UpstreamHTTP(name, config.base_url, headers=headers, max_connections=config.concurrency,
                                            timeout_s=config.timeout_s, connect_timeout_s=config.connect_timeout_s),
                         secret=key)

    def _path(self, model: str, method: str) -> str:
        return f"/{model_path(model)}:{method}"

    async def embed(self, req: EmbeddingRequest, *, model: str, deadline: float) -> EmbeddingsResult:
        if req.is_token_input():
            raise InvalidRequest("Gemini embeds text only, not token ids", param="input")
        texts = req.texts()
        dimensions = req.dimensions if isinstance(req.dimensions, int) else None
        batches = [texts[i:i + EMBED_BATCH] for i in range(0, len(texts), EMBED_BATCH)]
        results = await asyncio.gather(*(self._embed_batch(b, model, dimensions, deadline) for b in batches))
        return EmbeddingsResult([v for vectors in results for v in vectors], estimate_tokens(texts))

    async def _embed_batch(self, texts: list[str], model: str, dimensions: int | None,
                           deadline: float) -> list[list[float]]:
        body = to_embed_request(texts, model=model, dimensions=dimensions)
        async with self._http.post(self._path(model, "batchEmbedContents"), body, deadline=deadline) as resp:
            content = await resp.read()
        if resp.status >= 400:
            raise self._error(resp.status, content, resp.headers)
        return from_embed_response(content, len(texts))
