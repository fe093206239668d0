"""GET /healthz (the process is alive) and GET /readyz (the broker can serve: broker/ops/readiness.py).

No API key, as orchestrators and load balancers call them; they show no configuration beyond the
names of providers that lack workers. Neither is in the OpenAPI document: they are not part of
the OpenAI-compatible surface.

/readyz turns 503 when *any* provider with models has no live worker, which says the broker as a
whole is not ready. Use /healthz to decide whether to restart an API process.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.state import BrokerState
from broker.ops import readiness
from broker.wire import json_encoder

router = APIRouter()


class Health(msgspec.Struct, omit_defaults=True):
    status: Literal["ok", "unready"]
    missing: list[str] = []


_ALIVE = json_encoder.encode(Health("ok"))


@router.get("/healthz", include_in_schema=False)
async def healthz() -> Response:
    return Response(_ALIVE, media_type="application/json")


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    gaps = await readiness.missing(state.redis, state.keys, state.config, state.lua_scripts())
    if gaps:
        return Response(json_encoder.encode(Health("unready", gaps)), status_code=503, media_type="application/json",
                        headers={"cache-control": "no-store"})
    return Response(_ALIVE, media_type="application/json", headers={"cache-control": "no-store"})
