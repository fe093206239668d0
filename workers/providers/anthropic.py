"""Anthropic Messages API (`POST {base_url}/v1/messages`, https://docs.anthropic.com/en/api/messages).

Translation lives in anthropic_translate.py (request, response, errors) and
anthropic_stream.py (events → chunks), as pure functions golden-tested against
recorded payloads; this module only wires the shared HTTP client to them.
`MessagesClient` is the part any host of Claude shares: Vertex AI (vertex.py) reuses it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

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


class MessagesClient:
    """Claude's Messages API over some host: api.anthropic.com below, Vertex AI in vertex.py.

    A host decides where a request goes and how its body must look (`_request`, `_count_request`: given
    a Messages body that names its model), how a call is authorised (`_auth`) and how its errors read
    (`_error`); the translation and the event stream are Anthropic's on every host.
    """

    def __init__(self, name: str, http: UpstreamHTTP, *, default_max_tokens: int) -> None:
        self.name = name
        self._http = http
        self.default_max_tokens = default_max_tokens

    def _request(self, body: bytes, *, stream: bool) -> tuple[str, bytes]:
        raise NotImplementedError

    def _count_request(self, body: bytes) -> tuple[str, bytes]:
        raise NotImplementedError

    async def _auth(self) -> dict[str, str]:
        return {}

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return error_from_response(status, body, headers)

    def _check(self, req: ChatRequest) -> None:
        """Refuse, before anything is sent, what this host cannot take."""

    def _body(self, req: ChatRequest, model: str, *, stream: bool) -> tuple[str, bytes]:
        self._check(req)
        payload = to_anthropic(req, model=model, default_max_tokens=self.default_max_tokens, stream=stream)
        return self._request(request_encoder.encode(payload), stream=stream)

    async def complete(self, req: ChatRequest, *, model: str, deadline: float) -> ChatCompletion:
        path, body = self._body(req, model, stream=False)
        async with self._http.post(path, body, deadline=deadline, headers=await self._auth()) as resp:
            content = await resp.read()
        if resp.status >= 400:
            raise self._error(resp.status, content, resp.headers)
        return from_anthropic(content, json_mode=json_mode(req))

    async def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        path, body = self._body(req, model, stream=True)
        state = AnthropicStreamState(json_mode=json_mode(req))
        async with self._http.post(path, body, deadline=deadline, headers=await self._auth()) as resp:
            if resp.status >= 400:
                raise self._error(resp.status, await resp.read(), resp.headers)
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

    async def _headers(self, beta: str) -> dict[str, str]:
        # The client's beta flags travel with the body that uses them: dropping one breaks the request.
        return {**await self._auth(), **({"anthropic-beta": beta} if beta else {})}

    async def relay_messages(self, body: bytes, *, beta: str, deadline: float) -> bytes:
        path, body = self._request(body, stream=False)
        return await self._relay(path, body, beta, deadline)

    async def relay_count_tokens(self, body: bytes, *, beta: str, deadline: float) -> bytes:
        return await self._relay(*self._count_request(body), beta, deadline)

    async def _relay(self, path: str, body: bytes, beta: str, deadline: float) -> bytes:
        async with self._http.post(path, body, deadline=deadline, headers=await self._headers(beta)) as resp:
            content = await resp.read()
        if resp.status >= 400:
            raise self._error(resp.status, content, resp.headers)
        return content

    async def relay_message_events(self, body: bytes, *, beta: str, deadline: float) -> AsyncIterator[SSEEvent]:
        path, body = self._request(body, stream=True)
        async with self._http.post(path, body, deadline=deadline, headers=await self._headers(beta)) as resp:
            if resp.status >= 400:
                raise self._error(resp.status, await resp.read(), resp.headers)
            parser = SSEParser()
            async for raw in resp.iter_chunks():
                for event in parser.feed(raw):
                    yield event
                    if event.event == "message_stop":
                        return
        raise UpstreamError(f"upstream {self.name} ended the stream early", retryable=True)

    async def aclose(self) -> None:
        await self._http.aclose()


class AnthropicMessages(MessagesClient):
    """api.anthropic.com: the key in `x-api-key`, the version in a header, the model in the body."""

    def __init__(self, name: str, config: AnthropicProvider) -> None:
        self.config = config
        headers = {**config.headers, "anthropic-version": config.anthropic_version}
        if config.api_key:
            headers["x-api-key"] = config.api_key.reveal()
        # The path carries /v1, so a base_url written OpenAI-style (".../v1") must not double it.
        base_url = config.base_url.rstrip("/").removesuffix("/v1")
        super().__init__(name, UpstreamHTTP(name, base_url, headers=headers, max_connections=config.concurrency,
                                            timeout_s=config.timeout_s, connect_timeout_s=config.connect_timeout_s),
                         default_max_tokens=config.default_max_tokens)

    def _request(self, body: bytes, *, stream: bool) -> tuple[str, bytes]:
        return "/v1/messages", body

    def _count_request(self, body: bytes) -> tuple[str, bytes]:
        return "/v1/messages/count_tokens", body
