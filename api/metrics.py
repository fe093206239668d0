"""Requests counted for Prometheus (broker/metrics.py): a pure ASGI middleware and GET /metrics.

The middleware labels each answer with its route's path template (never the raw path: ids in
paths would make a series per request), its status, and the public model and tenant when the
request reached a job (api/dispatch.py sets `scope["llm_broker"]`). A pure ASGI middleware, not
Starlette's BaseHTTPMiddleware, which would add a task and a stream per request.
"""

from __future__ import annotations

import os
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.state import BrokerState
from broker import metrics, queue_stats

SCOPE_KEY = "llm_broker"  # (public model, tenant), set by the job endpoints once the request is routed
router = APIRouter()


class CountRequests:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            model, tenant = scope.get(SCOPE_KEY, ("", ""))
            metrics.REQUESTS.labels(path, str(status), model, tenant).inc()
            metrics.REQUEST_SECONDS.labels(path, model).observe(time.perf_counter() - started)


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
