"""AWS Bedrock through the Converse API: one request shape for Anthropic, Meta, Mistral, Amazon Nova,
Cohere and the other chat models Bedrock hosts.

    POST {endpoint}/model/{modelId}/converse          JSON in, JSON out
    POST {endpoint}/model/{modelId}/converse-stream   JSON in, AWS event-stream frames out
    POST {endpoint}/model/{modelId}/invoke            reranks (Cohere Rerank 3.5, Amazon Rerank: bedrock_rerank.py)

`modelId` is a model id (`amazon.nova-lite-v1:0`), a cross-region inference profile
(`us.anthropic.claude-3-5-haiku-20241022-v1:0`) or an ARN. Translation lives in bedrock_translate.py
(request, response) and bedrock_stream.py (frames → chunks), errors in bedrock_errors.py, signing in
bedrock_auth.py; this class wires the shared HTTP client to them. Every request is signed anew over the
exact bytes sent, so there is no header on the pooled session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from broker.config import BedrockProvider as BedrockConfig
from broker.wire import ChatChunk, ChatCompletion, ChatRequest
from broker.wire.rerank import RerankRequest
from workers.providers import bedrock_rerank
from workers.providers.bedrock_auth import Signer, model_path
from workers.providers.bedrock_errors import error_from_response
from workers.providers.bedrock_stream import Frames, StreamState, on_end, on_frame
from workers.providers.base import Ranked
from workers.providers.bedrock_translate import from_upstream, to_upstream
from workers.providers.http import UpstreamHTTP

_JSON = "application/json"
_EVENTS = "application/vnd.amazon.eventstream"


class BedrockConverse:
    def __init__(self, name: str, config: BedrockConfig) -> None:
        self.name = name
        self.config = config
        self._signer = Signer(config)
        self._http = UpstreamHTTP(name, config.base_url, headers={}, max_connections=config.concurrency,
                                  timeout_s=config.timeout_s, connect_timeout_s=config.connect_timeout_s)

    async def _headers(self, path: str, body: bytes, accept: str) -> dict[str, str]:
        headers = {**self.config.headers, "content-type": _JSON, "accept": accept}
        return await self._signer.sign(self._http.base_url + path, body, headers)

    async def _post(self, path: str, body: bytes, deadline: float) -> bytes:
        headers = await self._headers(path, body, _JSON)
        async with self._http.post(path, body, deadline=deadline, headers=headers, encoded=True) as resp:
            content = await resp.read()
        if resp.status >= 400:
            raise error_from_response(resp.status, content, resp.headers)
        return content

    async def complete(self, req: ChatRequest, *, model: str, deadline: float) -> ChatCompletion:
        content = await self._post(model_path(model, "converse"), to_upstream(req, model=model), deadline)
        return from_upstream(content, model=model)

    async def rerank(self, req: RerankRequest, *, model: str, deadline: float) -> Ranked:
        """Routed here only for deployments marked `capabilities: {rerank: true}` (broker/config/providers.py)."""
        body = bedrock_rerank.shape_rerank(req, model=model)
        return bedrock_rerank.ranked(await self._post(model_path(model, "invoke"), body, deadline))

    async def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        body, path = to_upstream(req, model=model), model_path(model, "converse-stream")
        headers = await self._headers(path, body, _EVENTS)
        async with self._http.post(path, body, deadline=deadline, headers=headers, encoded=True) as resp:
            if resp.status >= 400:
                raise error_from_response(resp.status, await resp.read(), resp.headers)
            frames, state = Frames(), StreamState(model)
            async for raw in resp.iter_chunks():
                for kind, name, payload in frames.feed(raw):
                    for chunk in on_frame(kind, name, payload, state):
                        yield chunk
                    if state.done:
                        return
        on_end(state)

    async def aclose(self) -> None:
        await self._http.aclose()
