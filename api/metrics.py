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
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
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
        status, headers = 500, ()

        async def sending(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], message.get("headers", ())
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            record(scope, status, headers, time.perf_counter() - started)


def record(scope: Scope, status: int, headers: Iterable[tuple[bytes, bytes]], took_s: float) -> None:
    """Count and log one answered request (`headers`: its response's, read only for the log line). Shared
    by ObserveRequests and the hot routes' path (api/hot_path.py), so both label alike."""
    path = getattr(scope.get("route"), "path", "unmatched")
    facts: Facts | None = scope.get(SCOPE_KEY)
    model, tenant = (facts.model, facts.tenant) if facts else ("", "")
    counted = _series.get((path, status, model, tenant))
    if counted is None:
        counted = _series[(path, status, model, tenant)] = (
            metrics.REQUESTS.labels(path, str(status), model, tenant), metrics.REQUEST_SECONDS.labels(path, model))
    counted[0].inc()
    counted[1].observe(took_s)
    level = logging.WARNING if status >= 500 else logging.INFO
    if access_log.isEnabledFor(level):
        request_id = next((v.decode() for k, v in headers if k == b"x-request-id"), "")
        fields = {"request_id": request_id, "method": scope.get("method"), "route": path, "status": status,
                  "latency_ms": round(took_s * 1000, 1)}
        if facts:
            fields.update(tenant=facts.tenant, key=facts.key, model=model, lane=facts.lane, tokens=facts.tokens)
        access_log.log(level, "%s %s %d", scope.get("method"), path, status, extra={"fields": fields})


# Each (route, status, model, tenant)'s children, looked up once: prometheus-client's `labels()` takes a
# lock, checks and stringifies its values on every call. As bounded as the series themselves (config, not
# traffic: broker/ops/metrics.py).
_series: dict[tuple[str, int, str, str], tuple[Counter, Histogram]] = {}


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
