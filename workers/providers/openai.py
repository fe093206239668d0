"""Any OpenAI-compatible upstream: OpenAI, Azure OpenAI, vLLM, Ollama, LocalAI, llama.cpp, Mistral,
DeepSeek, Groq, Together, OpenRouter...

The request already speaks the upstream's dialect, so translation is small
(openai_translate.py): swap in the upstream model id, ask for a usage chunk on
streams (we account by it), apply the server's profile (broker/routing/profiles.py),
and map errors. One pooled HTTP client per provider keeps keep-alive
connections (http.py), bounded by `concurrency`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from broker.config.providers import OpenAIProvider as OpenAISettings
from broker.errors import UpstreamError
from broker.routing.profiles import PROFILES, Profile
from broker.wire import (
    ChatChunk,
    ChatCompletion,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    TextCompletion,
)
from broker.wire.audio import SpeechRequest, TranscriptionRequest, reported_usage
from broker.wire.images import ImageRequest
from broker.wire.moderations import ModerationRequest
from broker.wire.rerank import RerankRequest
from workers.providers import openai_media as media_tr
from workers.providers import openai_rerank
from workers.providers import openai_translate as tr
from workers.providers.base import EmbeddingsResult, Ranked, Transcribed
from workers.providers.http import UpstreamHTTP
from workers.providers.sse import SSEEvent, SSEParser

T = TypeVar("T")
_LAST_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
R = TypeVar("R", ChatRequest, CompletionRequest)


class HTTPSettings(Protocol):
    """What the connection pool is sized and timed by (every HTTP provider's settings have it)."""

    @property
    def concurrency(self) -> int: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def connect_timeout_s(self) -> float: ...


class OpenAICompatible:
    """The adapter; Azure OpenAI (workers/providers/azure.py) is this with its own URLs, auth and errors,
    given through the seams below (`_path`, `_responses_path`, `_auth`, `_error`)."""

    def __init__(self, name: str, settings: OpenAISettings) -> None:
        headers = dict(settings.headers)
        if settings.api_key:
            headers["authorization"] = f"Bearer {settings.api_key.reveal()}"
        self._connect(name, settings, settings.base_url, headers, PROFILES[settings.profile],
                      stream_usage=settings.stream_usage, responses_api=settings.responses_api)

    def _connect(self, name: str, settings: HTTPSettings, base_url: str, headers: dict[str, str], profile: Profile, *,
                 stream_usage: bool, responses_api: bool) -> None:
        self.name = name
        self.profile = profile
        self.stream_usage = stream_usage
        self.speaks_responses = responses_api
        # Headers that change between requests (a bearer token that expires); None: the client's fixed ones do.
        self._auth: Callable[[], Awaitable[Mapping[str, str]]] | None = None
        self._http = UpstreamHTTP(name, base_url, headers=headers, max_connections=settings.concurrency,
                                  timeout_s=settings.timeout_s, connect_timeout_s=settings.connect_timeout_s)

    def _path(self, endpoint: str, model: str) -> str:
        return f"/{endpoint}"

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return tr.error_from_response(status, body, headers)

    def _shape(self, req: R, model: str, stream: bool) -> bytes:
        return tr.shape_request(req, model=model, stream=stream, stream_usage=self.stream_usage,
                                profile=self.profile)

    async def _headers(self) -> Mapping[str, str] | None:
        """This request's own headers (an Entra token), beside the pooled client's fixed ones: every
        upstream call below goes out with them, JSON, streamed, multipart alike."""
        return await self._auth() if self._auth is not None else None

    async def _post(self, path: str, body: bytes, deadline: float) -> bytes:
        headers = await self._headers()
        async with self._http.post(path, body, deadline=deadline, headers=headers) as resp:
            content = await resp.read()
        if resp.status >= 400:
            raise self._error(resp.status, content, resp.headers)
        return content

    async def _events(self, path: str, body: bytes, deadline: float, decode: Callable[[SSEEvent], T],
                      last: frozenset[str] = frozenset()) -> AsyncIterator[T]:
        """The stream's events, decoded, through `[DONE]` or an event named in `last`."""
        headers = await self._headers()
        async with self._http.post(path, body, deadline=deadline, headers=headers) as resp:
            if resp.status >= 400:
                raise self._error(resp.status, await resp.read(), resp.headers)
            parser = SSEParser()
            async for raw in resp.iter_chunks():
                for event in parser.feed(raw):
                    if event.data.startswith(b"[DONE]"):
                        return
                    yield decode(event)
                    if event.event in last:
                        return
        # The body ended before its end: a cut-off stream must not pass for a complete one.
        raise UpstreamError(f"upstream {self.name} ended the stream early", retryable=True)

    async def complete(self, req: ChatRequest, *, model: str, deadline: float) -> ChatCompletion:
        body = await self._post(self._path("chat/completions", model), self._shape(req, model, False), deadline)
        return tr.chat_completion(body)

    def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        repair = tr.StreamRepair()
        return self._events(self._path("chat/completions", model), self._shape(req, model, True), deadline,
                            lambda event: repair(tr.chat_chunk(event.data)))

    async def complete_text(self, req: CompletionRequest, *, model: str, deadline: float) -> TextCompletion:
        body = await self._post(self._path("completions", model), self._shape(req, model, False), deadline)
        return tr.text_completion(body)

    def stream_text(self, req: CompletionRequest, *, model: str, deadline: float) -> AsyncIterator[TextCompletion]:
        return self._events(self._path("completions", model), self._shape(req, model, True), deadline,
                            lambda event: tr.text_chunk(event.data))

    async def embed(self, req: EmbeddingRequest, *, model: str, deadline: float) -> EmbeddingsResult:
        body = await self._post(self._path("embeddings", model),
                                tr.shape_embeddings(req, model=model, profile=self.profile), deadline)
        vectors, prompt_tokens = tr.embeddings(body, len(req.texts()))
        return EmbeddingsResult(vectors, prompt_tokens)

    async def rerank(self, req: RerankRequest, *, model: str, deadline: float) -> Ranked:
        """Routed here only for deployments marked `capabilities: {rerank: true}` (workers/providers/openai_rerank.py)."""
        body = await self._post(self._path("rerank", model), openai_rerank.shape_rerank(req, model=model), deadline)
        return openai_rerank.ranked(body)

    # ---- the Responses API, relayed (workers/responses.py) when the settings say the upstream serves it

    def _responses_path(self) -> str:
        return "/responses"

    async def relay_responses(self, body: bytes, *, deadline: float) -> bytes:
        return await self._post(self._responses_path(), body, deadline)

    def relay_response_events(self, body: bytes, *, deadline: float) -> AsyncIterator[SSEEvent]:
        """Its events through the last one (`response.completed`, `.incomplete`, `.failed`) or `[DONE]`:
        whether OpenAI sends one after the last event is not documented, so either ends it."""
        return self._events(self._responses_path(), body, deadline, lambda event: event, last=_LAST_EVENTS)

    # ---- OpenAI's media endpoints (workers/media.py): bodies relayed with the upstream's model id

    async def generate_images(self, req: ImageRequest, body: bytes, *, model: str, deadline: float) -> bytes:
        return await self._post(self._path("images/generations", model), media_tr.with_model(body, model), deadline)

    async def moderate(self, req: ModerationRequest, body: bytes, *, model: str, deadline: float) -> bytes:
        return await self._post(self._path("moderations", model), media_tr.with_model(body, model), deadline)

    async def transcribe(self, req: TranscriptionRequest, *, model: str, deadline: float) -> Transcribed:
        headers = await self._headers()
        with open(req.file.path, "rb") as audio:
            async with self._http.post_form(self._path(req.endpoint, model), media_tr.transcription_form(req, model, audio),
                                            deadline=deadline, headers=headers) as resp:
                content = await resp.read()
        if resp.status >= 400:
            raise self._error(resp.status, content, resp.headers)
        seconds, tokens = reported_usage(content) if req.response_format in ("json", "verbose_json") else (None, None)
        return Transcribed(content, seconds=seconds, tokens=tokens)

    async def speak(self, req: SpeechRequest, body: bytes, *, model: str, deadline: float) -> AsyncIterator[bytes]:
        async with self._http.post(self._path("audio/speech", model), media_tr.with_model(body, model),
                                   deadline=deadline, headers=await self._headers()) as resp:
            if resp.status >= 400:
                raise self._error(resp.status, await resp.read(), resp.headers)
            async for piece in resp.iter_chunks():
                yield piece

    async def aclose(self) -> None:
        await self._http.aclose()
