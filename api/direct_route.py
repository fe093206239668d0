"""Routes whose endpoint is a plain `handle(request) -> Response`: documented like any FastAPI route,
served without FastAPI's per-request dependency machinery.

FastAPI wraps each endpoint in a handler that solves its dependencies, validates them and serializes
a response model (fastapi/routing.py `get_request_handler`), for routes served directly and for
routes of included routers alike (both build their app from `get_route_handler()`). The hot routes
(api/dispatch.py `endpoint`) read and validate their bodies with msgspec and build their Responses
themselves, so none of that does anything for them but cost time on every request. A POST to one of
them does not even pass through FastAPI's middleware and router: api/hot_path.py serves it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class DirectRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return handler
