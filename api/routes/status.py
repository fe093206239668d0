"""GET /status: a live page of the broker's state (broker/ops/status_data.py) for its operators.

One HTML document with its script inline (no build step, nothing fetched from elsewhere) that
reads GET /status/data every two seconds. Both need the admin key (config `admin.keys`): sent
as `Authorization: Bearer <key>`, or as the password of HTTP Basic auth, which browsers ask for
themselves (401 with `WWW-Authenticate: Basic`) and then send again with the page's own fetches.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from redis.exceptions import RedisError

from api.state import BrokerState
from broker.errors import AuthenticationFailed, Unavailable
from broker.ops import status_data
from broker.wire import json_encoder

router = APIRouter()
PAGE = (Path(__file__).parent / "status.html").read_text()
CHALLENGE = {"www-authenticate": 'Basic realm="llm-broker status", charset="UTF-8"'}


def _as_bearer(authorization: str | None) -> str | None:
    """HTTP Basic's password as a bearer key; any other header as it is."""
    if authorization is None or authorization[:6].lower() != "basic ":
        return authorization
    try:
        _, _, password = base64.b64decode(authorization[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return f"Bearer {password}"


def _admin(state: BrokerState, request: Request) -> None:
    try:
        state.auth.admin(_as_bearer(request.headers.get("authorization")))
    except AuthenticationFailed as exc:
        exc.headers = {**exc.headers, **CHALLENGE}  # the browser asks for the key
        raise


@router.get("/status", include_in_schema=False)
async def status_page(request: Request) -> Response:
    _admin(request.app.state.broker, request)
    return HTMLResponse(PAGE, headers={"cache-control": "no-store"})


@router.get("/status/data", include_in_schema=False)
async def status_json(request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    _admin(state, request)
    try:
        data = await status_data.read(state.redis, state.keys, state.config)
    except RedisError:
        raise Unavailable("Redis does not answer: the broker's state cannot be read.", retry_after_s=1) from None
    return Response(json_encoder.encode(data), media_type="application/json", headers={"cache-control": "no-store"})
