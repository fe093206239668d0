"""Each request counted for Prometheus (broker/ops/metrics.py) and logged in one line; GET /metrics.

The middleware labels each answer with its route's path template (never the raw path: ids in
paths would make a series per request), its status, and the public model and tenant when the
request reached a job (api/dispatch.py puts its `Facts` in the scope). It also writes the
request's one log line (logger `llm_broker.access`): request id, route, status, latency, and for
a job its tenant, key name, model, lane and tokens; failures (5xx) at WARNING, the rest at INFO.
Prompts and answers are never logged. A pure ASGI middleware, not Starlette's
BaseHTTPMiddleware, which would add a task and a stream per request.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.state import BrokerState
from broker.ops import metrics, queue_stats

SCOPE_KEY = "llm_broker"  # the request's Facts, set by the job endpoints once the request is routed
router = APIRouter()
access_log = logging.getLogger("llm_broker.access")


@dataclass(slots=True)
class Facts:
    """What a job endpoint learned about its request, for its metrics and its log line."""

    model: str  # the public model if configured (a label), else "passthrough"
    tenant: str
    key: str | None
    lane: str
    tokens: int | None = None  # the answer's total tokens, when the upstream reported them


class ObserveRequests:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status, request_id = 500, ""

        async def sending(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                request_id = next((v.decode() for k, v in message.get("headers", ()) if k == b"x-request-id"), "")
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            took = time.perf_counter() - started
            path = getattr(scope.get("route"), "path", "unmatched")
            facts: Facts | None = scope.get(SCOPE_KEY)
            model, tenant = (facts.model, facts.tenant) if facts else ("", "")
            metrics.REQUESTS.labels(path, str(status), model, tenant).inc()
            metrics.REQUEST_SECONDS.labels(path, model).observe(took)
            level = logging.WARNING if status >= 500 else logging.INFO
            if access_log.isEnabledFor(level):
                fields = {"request_id": request_id, "method": scope.get("method"), "route": path, "status": status,
                          "latency_ms": round(took * 1000, 1)}
                if facts:
                    fields.update(tenant=facts.tenant, key=facts.key, model=model, lane=facts.lane,
                                  tokens=facts.tokens)
                access_log.log(level, "%s %s %d", scope.get("method"), path, status, extra={"fields": fields})


def _registry() -> CollectorRegistry:
    """This process's metrics, or, with `api --workers N`, every API process's added up."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


@router.get("/metrics", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    body = generate_latest(_registry()).decode()
    try:
        body += queue_stats.exposition(await queue_stats.read(state.redis, state.keys, state.config))
        body += "# TYPE llm_broker_redis_up gauge\nllm_broker_redis_up 1\n"
    except RedisError:
        body += "# TYPE llm_broker_redis_up gauge\nllm_broker_redis_up 0\n"
    return Response(body, media_type=CONTENT_TYPE_LATEST)
