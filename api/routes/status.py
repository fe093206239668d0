"""GET /status: a live page of the broker's state (broker/ops/status_data.py) for its operators.

One HTML document with its script inline (no build step, nothing fetched from elsewhere) that
reads GET /status/data every two seconds. Both need the admin key (api/admin_auth.py). The charts,
spend, request log and keys are the console's (api/routes/console.py).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from redis.exceptions import RedisError

from api.admin_auth import admin
from broker.errors import Unavailable
from broker.ops import status_data
from broker.wire import json_encoder

router = APIRouter()
PAGE = (Path(__file__).parent / "status.html").read_text()


@router.get("/status", include_in_schema=False)
async def status_page(request: Request) -> Response:
    admin(request)
    return HTMLResponse(PAGE, headers={"cache-control": "no-store"})


@router.get("/status/data", include_in_schema=False)
async def status_json(request: Request) -> Response:
    state = admin(request)
    try:
        data = await status_data.read(state.redis, state.keys, state.config)
    except RedisError:
        raise Unavailable("Redis does not answer: the broker's state cannot be read.", retry_after_s=1) from None
    return Response(json_encoder.encode(data), media_type="application/json", headers={"cache-control": "no-store"})
