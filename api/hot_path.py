"""The hot routes' own way in: a POST to a job-backed route (api/direct_route.py) goes from the server
straight to its handler; every other request goes through FastAPI unchanged.

Through FastAPI such a request passed a dozen ASGI layers before its handler (FastAPI.__call__, its
body-limit and telemetry middlewares, Starlette's ServerErrorMiddleware, ours, ExceptionMiddleware,
AsyncExitStackMiddleware, a router matching some 50 routes, the included router, APIRoute.handle),
each a coroutine frame and most of them wrapping `send` once more: about a tenth of the API's CPU per
request (py-spy, issue 22). Of what they do, these requests need only this, done here with the same code:
- errors: the app's own exception handlers (api/app.py), found along the exception's MRO as Starlette
  finds them (starlette/_exception_handler.py), so both paths shape every error alike;
- metrics and the access log: api/metrics.py `record`, labelled with the route's template;
- the client's `X-Client-Request-Id` echoed and bound to the log context (api/request_ids.py);
- the body limit: the handlers read their bodies with api/decode.py `read_body` (FastAPI's own body
  limit is not set), and the door (api/door.py) stands in front of both paths.

The routes stay registered in FastAPI, so /openapi.json documents them. FastAPI's native OpenTelemetry
(off unless a provider is configured) does not see them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from inspect import isawaitable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api import metrics, request_ids
from api.direct_route import DirectRoute
from broker.ops import log_context

Handler = Callable[[Request], Awaitable[Response]]


def hot_routes(routes: Iterable[BaseRoute]) -> dict[str, tuple[APIRoute, Handler]]:
    """Each POST-only DirectRoute without path parameters, by its path."""
    return {route.path: (route, route.endpoint) for route in routes
            if isinstance(route, DirectRoute) and route.methods == {"POST"} and "{" not in route.path}


class HotPath:
    def __init__(self, app: FastAPI, routes: Iterable[BaseRoute], otherwise: ASGIApp) -> None:
        self.app = app  # what the handlers see as `request.app` (its state holds the BrokerState)
        self.routes = hot_routes(routes)
        self.otherwise = otherwise

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or (hot := self.routes.get(scope["path"])) is None:
            await self.otherwise(scope, receive, send)
            return
        started = time.perf_counter()
        route, handler = hot
        scope["app"], scope["route"] = self.app, route  # as Starlette and FastAPI set them
        status, headers = 500, []  # what ObserveRequests counts for an answer never started
        try:
            request = _Request(scope, receive)
            theirs = request_ids.sent_by_client(scope)
            if theirs:
                log_context.bind("", theirs)
            try:
                response = await handler(request)
            except Exception as exc:
                response = await self._error_response(request, exc)
            if theirs:
                response.headers[request_ids.CLIENT_REQUEST_ID] = theirs
            status, headers = response.status_code, response.raw_headers
            # An error once the answer has started (a stream's) goes to the server, as through FastAPI:
            # it can only drop the connection.
            await response(scope, receive, send)
        finally:
            metrics.record(scope, status, headers, time.perf_counter() - started)

    async def _error_response(self, request: Request, exc: Exception) -> Response:
        handlers = self.app.exception_handlers
        for cls in type(exc).__mro__:
            if (handler := handlers.get(cls)) is not None:
                response = handler(request, exc)
                return await response if isawaitable(response) else response
        raise exc


class _Headers(Headers):
    """Starlette's Headers, looked up in a dict built at the first lookup. A job's request is asked for
    a dozen headers (key, timeouts, priority, Prefer, ids...), most of them absent: Headers scans its
    list for each, and Mapping.get pays a raised KeyError for each absent one."""

    _by_name: dict[str, str] | None = None

    def _names(self) -> dict[str, str]:
        if self._by_name is None:  # the first of repeated headers wins, as in Headers
            self._by_name = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(self._list)}
        return self._by_name

    def get(self, key: str, default: Any = None) -> Any:
        return self._names().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return self._names()[key.lower()]

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and key.lower() in self._names()


class _Request(Request):
    @property
    def headers(self) -> Headers:
        if not hasattr(self, "_headers"):
            self._headers = _Headers(scope=self.scope)
        return self._headers


class BrokerAPI(FastAPI):
    """FastAPI entered through an edge built after its routes (api/app.py: the door, then the hot path),
    so the server, `llm-broker dev` and the tests all serve the same app."""

    edge: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await (self.edge or self.fastapi)(scope, receive, send)

    async def fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
