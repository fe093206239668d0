"""Any OpenAI-compatible upstream: OpenAI, vLLM, Ollama, LocalAI, llama.cpp server, OpenRouter...

The request already speaks the upstream's dialect, so translation is small:
swap in the upstream model id, ask for a usage chunk on streams (we bill by
it), and map errors. One pooled httpx.AsyncClient per provider keeps
keep-alive connections to the upstream, bounded by `concurrency`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import ClassVar

import httpx
import msgspec
from msgspec import UNSET

from broker.config import OpenAIProvider as OpenAIConfig
from broker.errors import UpstreamError, UpstreamTimeout, redact
from broker.wire import ChatChunk, ChatCompletion, ChatRequest, ChunkChoice, StreamOptions, Usage, json_encoder
from workers.providers.base import Capabilities
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


def error_from_response(status: int, body: bytes, headers: httpx.Headers | dict[str, str]) -> UpstreamError:
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


def _retry_after_s(headers: httpx.Headers | dict[str, str]) -> float | None:
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
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, name: str, config: OpenAIConfig) -> None:
        self.name = name
        self.config = config
        headers = {"content-type": "application/json", **config.headers}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key.reveal()}"
        self._client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
        )

    def _timeout(self, deadline: float) -> httpx.Timeout:
        remaining = max(deadline - time.time(), 0.001)
        return httpx.Timeout(min(self.config.timeout_s, remaining), connect=min(self.config.connect_timeout_s, remaining))

    async def complete(self, req: ChatRequest, *, model: str, deadline: float) -> ChatCompletion:
        body = to_upstream(req, model=model, stream=False, stream_usage=False)
        try:
            resp = await self._client.post("/chat/completions", content=body, timeout=self._timeout(deadline))
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"upstream {self.name} timed out") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cannot reach upstream {self.name}: {type(exc).__name__}", retryable=True) from None
        if resp.status_code >= 400:
            raise error_from_response(resp.status_code, resp.content, resp.headers)
        return from_upstream_completion(resp.content)

    async def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        body = to_upstream(req, model=model, stream=True, stream_usage=self.config.stream_usage)
        try:
            async with self._client.stream(
                "POST", "/chat/completions", content=body, timeout=self._timeout(deadline)
            ) as resp:
                if resp.status_code >= 400:
                    raise error_from_response(resp.status_code, await resp.aread(), resp.headers)
                parser = SSEParser()
                async for raw in resp.aiter_raw():
                    for event in parser.feed(raw):
                        if event.data.startswith(b"[DONE]"):
                            return
                        yield from_upstream_event(event.data)
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"upstream {self.name} timed out") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.name} connection failed: {type(exc).__name__}", retryable=True) from None
        # The body ended without [DONE]: a cut-off stream must not pass for a complete one.
        raise UpstreamError(f"upstream {self.name} ended the stream early", retryable=True)

    async def aclose(self) -> None:
        await self._client.aclose()
