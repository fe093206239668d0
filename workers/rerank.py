"""A /v1/rerank job: the provider scores, the worker shapes the answer.

Providers return bare scores (workers/providers/base.py `Ranked`), so what the client gets is the
same whichever deployment served it: results sorted by relevance (ties in document order), cut to
`top_n`, each with its document when `return_documents` asks (Cohere's v1 default is not to), and
the usage priced here, per token and per search unit (broker/money/pricing.py). An upstream that
reports no usage is billed by the broker's own estimate: tokens at ~4 characters each, search units
by Cohere's definition (broker/routing/capabilities.py).
"""

from __future__ import annotations

from typing import Any

from broker.errors import InvalidRequest, UpstreamError
from broker.queue.jobs import Job
from broker.queue.payloads import RerankPayload
from broker.routing.capabilities import estimate_search_units, estimate_tokens
from broker.wire import Usage, json_encoder
from broker.wire.rerank import (
    BilledUnits,
    RerankDocument,
    RerankMeta,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
)
from workers.meter import Meter
from workers.providers import Provider, RerankProvider
from workers.providers.base import Ranked


def results(req: RerankRequest, ranked: Ranked) -> list[RerankResult]:
    """The client's results: best first, `top_n` of them, documents attached if asked for."""
    count = len(req.documents)
    indexes = [index for index, _ in ranked.scores]
    if any(not 0 <= i < count for i in indexes) or len(set(indexes)) != len(indexes):
        raise UpstreamError(f"the upstream scored documents {sorted(indexes)} of {count}", retryable=True)
    if len(indexes) < req.wanted():
        raise UpstreamError(f"the upstream scored {len(indexes)} documents, {req.wanted()} were asked for",
                            retryable=True)
    best = sorted(ranked.scores, key=lambda scored: (-scored[1], scored[0]))[:req.wanted()]
    texts = req.texts() if req.return_documents is True else None
    return [RerankResult(i, score, RerankDocument(texts[i])) if texts is not None else RerankResult(i, score)
            for i, score in best]


async def serve(provider: Provider, job: Job, payload: RerankPayload, emit: Any,
                meter: Meter) -> tuple[bytes, Usage | None]:
    if not isinstance(provider, RerankProvider):
        raise InvalidRequest(f"provider {job.provider!r} has no rerank endpoint", param="model")
    req = payload.request
    ranked = await provider.rerank(req, model=job.upstream_model, deadline=job.deadline)
    answer = results(req, ranked)
    prompt = ranked.prompt_tokens if ranked.prompt_tokens is not None else estimate_tokens(req)
    searches = ranked.search_units if ranked.search_units is not None else estimate_search_units(req)
    usage = meter.stamp(Usage(prompt, 0, prompt, search_units=searches))
    body = RerankResponse(f"{payload.answer_prefix}{job.id}", job.model, answer,
                          RerankUsage(prompt, prompt, searches, cost=usage.cost),
                          RerankMeta(BilledUnits(searches)))
    return json_encoder.encode(body), usage
