"""Any OpenAI-compatible upstream: OpenAI, vLLM, Ollama, LocalAI, llama.cpp server, OpenRouter...

The request already speaks the upstream's dialect, so translation is small:
swap in the upstream model id, ask for a usage chunk on streams (we bill by
it), and map errors. One pooled HTTP client per provider keeps
keep-alive connections (workers/providers/http.py), bounded by `concurrency`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import msgspec
from msgspec import UNSET

from broker.config import OpenAIProvider as OpenAIConfig
from broker.errors import UpstreamError, redact
from broker.wire import ChatChunk, ChatCompletion, ChatRequest, ChunkChoice, StreamOptions, Usage, json_encoder
from workers.providers.http import UpstreamHTTP
from workers.providers.sse import SSEParser

# ---------------------------------------------------------------- pure translation


class UpstreamErrorBody(msgspec.Struct):
    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | int | None = None  # vLLM and OpenRouter send an int


class UpstreamErrorEnvelope(msgspec.Struct):
    error: UpstreamErrorBody | str | None = None
    message: str | None = None  # older vLLM: a flat error object


class UpstreamEvent(msgspec.Struct):
    """One `data:` event of an upstream stream: a chunk, or an error after the 200."""

    id: str = ""
    created: int = 0
    model: str = ""
    choices: list[ChunkChoice] = []
    usage: Usage | None = None
    system_fingerprint: str | None = None
    error: UpstreamErrorBody | None = None


_event_decoder = msgspec.json.Decoder(UpstreamEvent)
_completion_decoder = msgspec.json.Decoder(ChatCompletion)
_error_decoder = msgspec.json.Decoder(UpstreamErrorEnvelope)


def to_upstream(req: ChatRequest, *, model: str, stream: bool, stream_usage: bool) -> bytes:
    options = req.stream_options if stream else UNSET  # OpenAI rejects stream_options without stream
    if stream and stream_usage:
        options = StreamOptions(include_usage=True)
    return json_encoder.encode(msgspec.structs.replace(req, model=model, stream=stream, stream_options=options))


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    message = f"upstream returned HTTP {status}"
    code = param = None
    try:
        envelope = _error_decoder.decode(body)
        detail = envelope.error
        if isinstance(detail, UpstreamErrorBody):
            message = detail.message or message
            param = detail.param
            code = detail.code if isinstance(detail.code, str) else None
        elif isinstance(detail, str):
            message = detail
        elif envelope.message:
            message = envelope.message
    except msgspec.DecodeError:
        pass
    retry_after = _retry_after_s(headers)
    return UpstreamError.for_status(
        status, f"upstream error ({status}): {redact(message)}", param=param, code=code, retry_after_s=retry_after
    )


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def from_upstream_event(data: bytes) -> ChatChunk:
    try:
        event = _event_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"upstream sent an invalid stream event: {exc}", retryable=True) from None
    if event.error is not None:
        raise UpstreamError(
            f"upstream error mid-stream: {redact(event.error.message or 'unknown error')}",
            code=event.error.code if isinstance(event.error.code, str) else None,
            retryable=True,
        )
    return ChatChunk(event.id, event.created, event.model, event.choices, usage=event.usage or UNSET,
                     system_fingerprint=event.system_fingerprint or UNSET)


def from_upstream_completion(body: bytes) -> ChatCompletion:
    try:
        return _completion_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"upstream returned an invalid completion: {exc}", retryable=True) from None


# ---------------------------------------------------------------- adapter


class OpenAICompatible:
    def __init__(self, name: str, config: OpenAIConfig) -> None:
        self.name = name
        self.config = config
        headers = dict(config.headers)
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key.reveal()}"
        self._http = UpstreamHTTP(name, config.base_url, headers=headers, max_connections=config.concurrency,
                                  timeout_s=config.timeout_s, connect_timeout_s=config.connect_timeout_s)

    async def complete(self, req: ChatRequest, *, model: str, deadline: float) -> ChatCompletion:
        body = to_upstream(req, model=model, stream=False, stream_usage=False)
        async with self._http.post("/chat/completions", body, deadline=deadline) as resp:
            content = await resp.read()
        if resp.status >= 400:
            raise error_from_response(resp.status, content, resp.headers)
        return from_upstream_completion(content)

    async def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        body = to_upstream(req, model=model, stream=True, stream_usage=self.config.stream_usage)
        async with self._http.post("/chat/completions", body, deadline=deadline) as resp:
            if resp.status >= 400:
                raise error_from_response(resp.status, await resp.read(), resp.headers)
            parser = SSEParser()
            async for raw in resp.iter_chunks():
                for event in parser.feed(raw):
                    if event.data.startswith(b"[DONE]"):
                        return
                    yield from_upstream_event(event.data)
        # The body ended without [DONE]: a cut-off stream must not pass for a complete one.
        raise UpstreamError(f"upstream {self.name} ended the stream early", retryable=True)

    async def aclose(self) -> None:
        await self._http.aclose()
