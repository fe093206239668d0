"""`x-request-id` on every answer, and the client's own `X-Client-Request-Id` echoed beside it.

A request that became a job is `req_<job id>` (api/dispatch.py), the id workers log it by. An
error raised before a job exists (unknown route, bad key, invalid body) still gets an id of its
own from the error handler (api/app.py), so every error a client reports can be found.

The client's id is taken only if it is printable ASCII of at most 128 characters (anything else
is ignored, never an error): it is echoed in a response header and written to logs, where a
control character could forge a line or split a header.
"""

from __future__ import annotations

import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.ops import log_context

REQUEST_ID = "x-request-id"
CLIENT_REQUEST_ID = "x-client-request-id"
MAX_CLIENT_REQUEST_ID = 128
_CLIENT_HEADER = CLIENT_REQUEST_ID.encode()


def new() -> str:
    return f"req_{uuid.uuid4().hex}"


def client_request_id(value: str | bytes | None) -> str:
    """The client's id if it is acceptable, else ""."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not value or len(value) > MAX_CLIENT_REQUEST_ID or not all(" " <= c <= "~" for c in value):
        return ""
    return value


def sent_by_client(scope: Scope) -> str:
    """The request's acceptable `X-Client-Request-Id`, else "" (a scan of its header list)."""
    return next((client_request_id(v) for k, v in scope["headers"] if k == _CLIENT_HEADER), "")


class EchoClientRequestId:
    """ASGI middleware: a request that sent an acceptable `X-Client-Request-Id` gets it back on
    its response, and its log lines carry it. A request without one passes straight through:
    the common path pays a scan of its header list and nothing per body chunk."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        theirs = sent_by_client(scope) if scope["type"] == "http" else ""
        if not theirs:
            await self.app(scope, receive, send)
            return
        log_context.bind("", theirs)

        async def send_echoing(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[CLIENT_REQUEST_ID] = theirs
            await send(message)

        await self.app(scope, receive, send_echoing)
