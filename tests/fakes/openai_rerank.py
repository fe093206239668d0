"""The fake upstream's /v1/rerank, as vLLM serves it for a cross-encoder model
(https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html#re-rank-api): Cohere/Jina's request,
results sorted by relevance with their documents, `usage.total_tokens`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.rerank_scores import overlap

_encoder = msgspec.json.Encoder()


class RerankRequest(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    query: str
    documents: list[str]
    top_n: int = 0
    max_tokens_per_doc: int = 0


def rerank_routes(record: Callable[[Request, Any], None],
                  guard: Callable[[Request, Any], Response | None]) -> list[Route]:
    async def rerank(request: Request) -> Response:
        body = msgspec.json.decode(await request.body())
        record(request, body)
        if (denied := guard(request, body)) is not None:
            return denied
        try:
            req = msgspec.convert(body, RerankRequest)
        except msgspec.ValidationError as exc:  # vLLM (pydantic) answers a bad body with 400
            return Response(_encoder.encode({"object": "error", "message": str(exc), "type": "BadRequestError",
                                             "param": None, "code": 400}), 400, media_type="application/json")
        scored = sorted(((overlap(req.query, d), i) for i, d in enumerate(req.documents)), key=lambda s: (-s[0], s[1]))
        results = [{"index": i, "document": {"text": req.documents[i]}, "relevance_score": score}
                   for score, i in scored[:req.top_n or None]]
        tokens = sum(len(req.query.split()) + len(d.split()) for d in req.documents)
        return Response(_encoder.encode({"id": "rerank-fake", "model": req.model, "usage": {"total_tokens": tokens},
                                         "results": results}), media_type="application/json")

    return [Route("/v1/rerank", rerank, methods=["POST"])]
