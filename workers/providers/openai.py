"""Any OpenAI-compatible upstream: OpenAI, Azure OpenAI, vLLM, Ollama, LocalAI, llama.cpp, Mistral,
DeepSeek, Groq, Together, OpenRouter...

The request already speaks the upstream's dialect, so translation is small
(openai_translate.py): swap in the upstream model id, ask for a usage chunk on
streams (we account by it), apply the server's profile (broker/routing/profiles.py),
and map errors. One pooled HTTP client per provider keeps keep-alive
connections (http.py), bounded by `concurrency`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from broker.config.providers import OpenAIProvider as OpenAISettings
from broker.errors import UpstreamError
from broker.routing.profiles import PROFILES
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


class OpenAICompatible:
    def __init__(self, name: str, settings: OpenAISettings) -> None:
        self.name = name
        self.settings = settings
        self.profile = PROFILES[settings.profile]
        headers = dict(settings.headers)
        if settings.api_key:
            if self.profile.azure:
                headers["api-key"] = settings.api_key.reveal()
            else:
                headers["authorization"] = f"Bearer {settings.api_key.reveal()}"
        self._http = UpstreamHTTP(name, settings.base_url, headers=headers, max_connections=settings.concurrency,
                                  timeout_s=settings.timeout_s, connect_timeout_s=settings.connect_timeout_s)
        self.speaks_responses = settings.responses_api

    def _path(self, endpoint: str, model: str) -> str:
        if self.profile.azure:  # the deployment is in the path, the API version in the query
            return f"/openai/deployments/{model}/{endpoint}?api-version={self.settings.api_version}"
        return f"/{endpoint}"

    def _shape(self, req: R, model: str, stream: bool) -> bytes:
        return tr.shape_request(req, model=model, stream=stream, stream_usage=self.settings.stream_usage,
                                profile=self.profile)

    async def _post(self, path: str, body: bytes, deadline: float) -> bytes:
        async with self._http.post(path, body, deadline=deadline) as resp:
            content = await resp.read()
        if resp.status >= 400:
            raise tr.error_from_response(resp.status, content, resp.headers)
        return content

    async def _events(self, path: str, body: bytes, deadline: float, decode: Callable[[SSEEvent], T],
                      last: frozenset[str] = frozenset()) -> AsyncIterator[T]:
        """The stream's events, decoded, through `[DONE]` or an event named in `last`."""
        async with self._http.post(path, body, deadline=deadline) as resp:
            if resp.status >= 400:
                raise tr.error_from_response(resp.status, await resp.read(), resp.headers)
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
        # Azure: the deployment is the body's `model`, not in the path
        # (https://learn.microsoft.com/azure/ai-foundry/openai/how-to/responses).
        if self.profile.azure:
            return f"/openai/responses?api-version={self.settings.api_version}"
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
        with open(req.file.path, "rb") as audio:
            async with self._http.post_form(self._path(req.endpoint, model), media_tr.transcription_form(req, model, audio),
                                            deadline=deadline) as resp:
                content = await resp.read()
        if resp.status >= 400:
            raise tr.error_from_response(resp.status, content, resp.headers)
        seconds, tokens = reported_usage(content) if req.response_format in ("json", "verbose_json") else (None, None)
        return Transcribed(content, seconds=seconds, tokens=tokens)

    async def speak(self, req: SpeechRequest, body: bytes, *, model: str, deadline: float) -> AsyncIterator[bytes]:
        async with self._http.post(self._path("audio/speech", model), media_tr.with_model(body, model),
                                   deadline=deadline) as resp:
            if resp.status >= 400:
                raise tr.error_from_response(resp.status, await resp.read(), resp.headers)
            async for piece in resp.iter_chunks():
                yield piece

    async def aclose(self) -> None:
        await self._http.aclose()
