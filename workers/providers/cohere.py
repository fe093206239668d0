"""Cohere's v2 API: chat through /v2/chat, embeddings through /v2/embed, reranks through /v2/rerank.

Translation lives in cohere_translate.py (requests, responses, errors) and cohere_stream.py (SSE
events → chunks); this module wires the shared HTTP client to them. The key goes as a bearer token
(https://docs.cohere.com/reference/about).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from broker.config.providers import CohereProvider as CohereConfig
from broker.errors import InvalidRequest, UpstreamError
from broker.wire import ChatChunk, ChatCompletion, ChatRequest, EmbeddingRequest
from broker.wire.rerank import RerankRequest
from workers.providers import cohere_translate as tr
from workers.providers.base import EmbeddingsResult, Ranked
from workers.providers.cohere_stream import StreamState, finished, on_event
from workers.providers.http import UpstreamHTTP
from workers.providers.sse import SSEParser


class CohereV2:
    def __init__(self, name: str, config: CohereConfig) -> None:
        self.name = name
        self.config = config
        headers = dict(config.headers)
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key.reveal()}"
        self._http = UpstreamHTTP(name, config.base_url, headers=headers, max_connections=config.concurrency,
                                  timeout_s=config.timeout_s, connect_timeout_s=config.connect_timeout_s)

    async def _post(self, path: str, body: bytes, deadline: float) -> bytes:
        async with self._http.post(path, body, deadline=deadline) as resp:
            content = await resp.read()
        if resp.status >= 400:
            raise tr.error_from_response(resp.status, content, resp.headers)
        return content

    async def complete(self, req: ChatRequest, *, model: str, deadline: float) -> ChatCompletion:
        body = await self._post("/v2/chat", tr.to_upstream(req, model=model, stream=False), deadline)
        return tr.from_upstream(body, model=model)

    async def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        body = tr.to_upstream(req, model=model, stream=True)
        async with self._http.post("/v2/chat", body, deadline=deadline) as resp:
            if resp.status >= 400:
                raise tr.error_from_response(resp.status, await resp.read(), resp.headers)
            parser, state = SSEParser(), StreamState(model)
            async for raw in resp.iter_chunks():
                for event in parser.feed(raw):
                    if event.data.strip() == b"[DONE]":  # Cohere's SDK allows for one after message-end
                        continue
                    for chunk in on_event(event.data, state):
                        yield chunk
                    if finished(state):
                        return
        raise UpstreamError(f"upstream {self.name} ended the stream before message-end", retryable=True)

    async def embed(self, req: EmbeddingRequest, *, model: str, deadline: float) -> EmbeddingsResult:
        if req.is_token_input():
            raise InvalidRequest("Cohere embeds text only, not token ids", param="input")
        texts = req.texts()
        dimensions = req.dimensions if isinstance(req.dimensions, int) else None
        batches = [texts[i:i + tr.EMBED_BATCH] for i in range(0, len(texts), tr.EMBED_BATCH)]
        results = await asyncio.gather(*(self._embed_batch(b, model, dimensions, deadline) for b in batches))
        return EmbeddingsResult([v for vectors, _ in results for v in vectors], sum(tokens for _, tokens in results))

    async def _embed_batch(self, texts: list[str], model: str, dimensions: int | None,
                           deadline: float) -> tuple[list[list[float]], int]:
        body = tr.to_embed(texts, model=model, input_type=self.config.embed_input_type, dimensions=dimensions)
        return tr.from_embed(await self._post("/v2/embed", body, deadline), len(texts))

    async def rerank(self, req: RerankRequest, *, model: str, deadline: float) -> Ranked:
        scores, tokens, searches = tr.from_rerank(await self._post("/v2/rerank", tr.to_rerank(req, model=model),
                                                                   deadline))
        return Ranked(scores, prompt_tokens=tokens, search_units=searches)

    async def aclose(self) -> None:
        await self._http.aclose()
