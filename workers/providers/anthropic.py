"""Anthropic Messages API (`POST {base_url}/v1/messages`, https://docs.anthropic.com/en/api/messages).

Translation lives in anthropic_translate.py (request, response, errors) and
anthropic_stream.py (events → chunks), as pure functions golden-tested against
recorded payloads; this class only wires the shared HTTP client to them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from broker.config.providers import AnthropicProvider
from broker.errors import UpstreamError
from broker.wire import ChatChunk, ChatCompletion, ChatRequest
from workers.providers.anthropic_stream import AnthropicStreamState
from workers.providers.anthropic_translate import (
    error_from_response,
    from_anthropic,
    json_mode,
    to_anthropic,
)
from workers.providers.anthropic_wire import request_encoder
from workers.providers.http import UpstreamHTTP
from workers.providers.sse import SSEEvent, SSEParser


class AnthropicMessages:
    def __init__(self, name: str, config: AnthropicProvider) -> None:
        self.name = name
        self.config = config
        headers = {**config.headers, "anthropic-version": config.anthropic_version}
        if config.api_key:
            headers["x-api-key"] = config.api_key.reveal()
        # The path carries /v1, so a base_url written OpenAI-style (".../v1") must not double it.
        base_url = config.base_url.rstrip("/").removesuffix("/v1")
        self._http = UpstreamHTTP(name, base_url, headers=headers, max_connections=config.concurrency,
                                  timeout_s=config.timeout_s, connect_timeout_s=config.connect_timeout_s)

    def _body(self, req: ChatRequest, model: str, *, stream: bool) -> bytes:
        payload = to_anthropic(req, model=model, default_max_tokens=self.config.default_max_tokens, stream=stream)
        return request_encoder.encode(payload)

    async def complete(self, req: ChatRequest, *, model: str, deadline: float) -> ChatCompletion:
        body = self._body(req, model, stream=False)
        async with self._http.post("/v1/messages", body, deadline=deadline) as resp:
            content = await resp.read()
        if resp.status >= 400:
            raise error_from_response(resp.status, content, resp.headers)
        return from_anthropic(content, json_mode=json_mode(req))

    async def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        body = self._body(req, model, stream=True)
        state = AnthropicStreamState(json_mode=json_mode(req))
        async with self._http.post("/v1/messages", body, deadline=deadline) as resp:
            if resp.status >= 400:
                raise error_from_response(resp.status, await resp.read(), resp.headers)
            parser = SSEParser()
            async for raw in resp.iter_chunks():
                for event in parser.feed(raw):
                    for chunk in state.on_event(event.event, event.data):
                        yield chunk
                    if state.done:
                        return
        # No message_stop: a cut-off stream must not pass for a complete one.
        raise UpstreamError(f"upstream {self.name} ended the stream early", retryable=True)

    # ------------------------------------------------------------ /v1/messages relayed as received

    def _beta(self, beta: str) -> dict[str, str]:
        # The client's beta flags travel with the body that uses them: dropping one breaks the request.
        return {"anthropic-beta": beta} if beta else {}

    async def relay_messages(self, body: bytes, *, beta: str, deadline: float) -> bytes:
        return await self._relay("/v1/messages", body, beta, deadline)

    async def relay_count_tokens(self, body: bytes, *, beta: str, deadline: float) -> bytes:
        return await self._relay("/v1/messages/count_tokens", body, beta, deadline)

    async def _relay(self, path: str, body: bytes, beta: str, deadline: float) -> bytes:
        async with self._http.post(path, body, deadline=deadline, headers=self._beta(beta)) as resp:
            content = await resp.read()
        if resp.status >= 400:
            raise error_from_response(resp.status, content, resp.headers)
        return content

    async def relay_message_events(self, body: bytes, *, beta: str, deadline: float) -> AsyncIterator[SSEEvent]:
        async with self._http.post("/v1/messages", body, deadline=deadline, headers=self._beta(beta)) as resp:
            if resp.status >= 400:
                raise error_from_response(resp.status, await resp.read(), resp.headers)
            parser = SSEParser()
            async for raw in resp.iter_chunks():
                for event in parser.feed(raw):
                    yield event
                    if event.event == "message_stop":
                        return
        raise UpstreamError(f"upstream {self.name} ended the stream early", retryable=True)

    async def aclose(self) -> None:
        await self._http.aclose()
