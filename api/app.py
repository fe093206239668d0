"""The FastAPI edge: app factory, lifespan, and the exception handlers that shape every error as its
protocol does (OpenAI's; Anthropic's on /v1/messages: api/anthropic.py).

The API authenticates, validates, turns a request into a Job, enqueues it and
waits for the replies; it never calls a provider.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from api import anthropic, dispatch, door, metrics, request_ids, unavailable
from api.hot_path import BrokerAPI, HotPath
from api.loop_lag import LoopLag
from api.routes import (
    admin,
    audio,
    batches,
    chat,
    completions,
    console,
    embeddings,
    files,
    health,
    images,
    jobs,
    messages,
    models,
    moderations,
    rerank,
    responses,
    status,
    usage,
)
from api.state import BrokerState
from broker import config as config_module
from broker.config import Config
from broker.errors import BrokerError, InvalidRequest, ModelNotFound, Overloaded
from broker.ops import log_context
from broker.wire import json_encoder

log = logging.getLogger(__name__)


def error_response(err: BrokerError, request: Request) -> Response:
    headers = dict(err.headers)
    # Raised before a job existed (no route, bad key, invalid body): an id of its own, for the logs
    # and for the client's bug report alike.
    if request_ids.REQUEST_ID not in headers:
        headers[request_ids.REQUEST_ID] = log_context.request_id() or request_ids.new()
    if err.retry_after_s is not None:
        # Rounded up: a client that retries a moment too early only meets another 429.
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after_s)))
        headers["retry-after-ms"] = str(math.ceil(err.retry_after_s * 1000))
    if not err.retryable and (err.status in (408, 409, 429) or err.status >= 500):
        # The OpenAI SDK retries these statuses unless told otherwise: an upstream refusing our
        # own key, a job that failed on every attempt or ran out its deadline will not do better.
        headers["x-should-retry"] = "false"
    if anthropic.serves(request.url.path):  # Anthropic's clients read Anthropic's error shape
        headers["request-id"] = headers[request_ids.REQUEST_ID]
        return Response(anthropic.error_body(err, headers["request-id"]), status_code=anthropic.status_of(err),
                        headers=headers, media_type="application/json")
    return Response(json_encoder.encode(err.to_body()), status_code=err.status, headers=headers,
                    media_type="application/json")


def _refuse(scope: Scope, err: Overloaded) -> Response:
    return error_response(err, Request(scope))


async def _broker_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BrokerError)
    return error_response(exc, request)


async def _redis_down(request: Request, exc: Exception) -> Response:
    """Any Redis failure a route lets through (api/unavailable.py): logged here once, with its cause."""
    assert isinstance(exc, RedisError)
    log.warning("%s %s: Redis unavailable, answering 503: %s: %s", request.method, request.url.path,
                type(exc).__name__, exc)
    return error_response(unavailable.for_path(request.url.path), request)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response(ModelNotFound("Unknown request URL. Please check the URL and method.",
                                            code="unknown_url"), request)
    return error_response(InvalidRequest(str(exc.detail), status=exc.status_code, code=None), request)


async def _invalid_params(request: Request, exc: Exception) -> Response:
    """FastAPI's own 422 `{"detail": [...]}` for a typed path or query parameter, OpenAI-shaped."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
    return error_response(InvalidRequest(f"Invalid parameter: {first.get('msg', 'invalid value')}.", param=param),
                          request)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette answers this one outside every middleware: the client's id is echoed here.
    ours = log_context.request_id() or request_ids.new()
    theirs = request_ids.client_request_id(request.headers.get(request_ids.CLIENT_REQUEST_ID))
    log_context.bind(ours, theirs)
    log.exception("unhandled error", exc_info=exc)
    error = BrokerError("The server had an error while processing your request.",
                        headers={request_ids.REQUEST_ID: ours})
    if theirs:
        error.headers[request_ids.CLIENT_REQUEST_ID] = theirs
    return error_response(error, request)


# Requests allocate a few hundred containers each, nearly all freed by reference counting: collecting the
# young generation every 700 net allocations (CPython's default) did so a dozen times a second under load.
YOUNG_GC_THRESHOLD = 20_000


def _settle_collector() -> None:
    """Once started, what the process holds (modules, config, scripts: ~80k objects) lives as long as it:
    moved out of the collector's sight (https://docs.python.org/3/library/gc.html#gc.freeze), it is no
    longer walked by every full collection, which took ~70 ms each here (a stall for every request in
    flight) and ~4 ms after. With the larger young generation too, the collector's time per request at
    c=64 fell from ~0.15 ms to under 0.01 ms (gc.callbacks, on a busy 2-core box: issue 22)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])


def create_app(config: Config) -> BrokerAPI:
    lag = LoopLag(config.server.shed_lag_ms)  # sampled even when it sheds nothing: its metrics guide the setting

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = BrokerState(config)
        await state.start()
        app.state.broker = state
        _settle_collector()
        probe = asyncio.get_running_loop().create_task(lag.run(), name="loop-lag")
        try:
            yield
        finally:
            probe.cancel()
            await state.aclose()

    app = BrokerAPI(title="llm-broker", version="0.1.0", lifespan=lifespan)
    routers = (health.router, chat.router, completions.router, embeddings.router, images.router, moderations.router,
               audio.router, rerank.router, messages.router, responses.router, models.router, usage.router,
               jobs.router, files.router, batches.router, admin.router, metrics.router, status.router,
               console.router)
    for router in routers:
        app.include_router(router)
    app.add_middleware(request_ids.EchoClientRequestId)
    app.add_middleware(metrics.ObserveRequests)  # it sees every answer's final status but the door's refusals
    # The job-backed POSTs skip FastAPI (api/hot_path.py), with the same error handlers, metrics and ids.
    server = config.server
    if server.hot_path:
        app.edge = HotPath(app, [route for router in routers for route in router.routes], otherwise=app.fastapi)
    if server.max_in_flight or server.max_new_per_s or server.shed_lag_ms:  # in front of both paths, it counts
        app.edge = door.Door(app.edge or app.fastapi, max_in_flight=server.max_in_flight,  # its refusals itself
                             max_new_per_s=server.max_new_per_s, lag=lag, refuse=_refuse)
    app.add_exception_handler(BrokerError, _broker_error)
    app.add_exception_handler(RedisError, _redis_down)  # ConnectionError, TimeoutError...: found by MRO
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_params)
    app.add_exception_handler(Exception, _unexpected)
    app.openapi = lambda: _with_wire_components(app)  # type: ignore[method-assign]
    return app


def _with_wire_components(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document, plus the request Structs' schemas the routes reference."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(dispatch.OPENAPI_COMPONENTS)
        schema["components"]["schemas"].update(rerank.OPENAPI_COMPONENTS)
        app.openapi_schema = schema
    return app.openapi_schema


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` with several processes: config comes from the environment."""
    path = os.environ.get("LLM_BROKER_CONFIG")
    if not path:  # never the built-in dev tenant, whose key is public
        raise config_module.ConfigError("$LLM_BROKER_CONFIG is not set: the API needs a config file")
    if not logging.getLogger().handlers:  # a process uvicorn spawned for `--workers N`
        log_context.configure(os.environ.get(log_context.LEVEL_ENV, "info"), os.environ.get(log_context.FORMAT_ENV, "text"))
    return create_app(config_module.resolve(path))
