"""GET /console: the operator console, charts over time, spend, the request log and the keys.

Plain HTML and JS in api/static/ (no build step), with uPlot 1.6.32 (MIT, api/static/uPlot.LICENSE,
from npm `uplot`'s dist/) vendored for the charts. Every route needs the admin key (api/admin_auth.py);
the keys panel calls /admin/keys (api/routes/admin.py) with the same credentials.

    GET /console                  the page
    GET /console/assets/{name}    its script, styles and uPlot
    GET /console/meta             tenants, models, deployments and providers, for the filters
    GET /console/series           ?window=1h|24h|30d&tenant=&model=&deployment=  (broker/ops/series.py)
    GET /console/spend            ?month=YYYY-MM&tenant=                         (broker/ops/spend.py)
    GET /console/log              ?limit=&tenant=&model=&deployment=&key=&failed=1 (broker/ops/request_log.py)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from api.admin_auth import admin
from api.state import BrokerState
from broker.errors import InvalidRequest, ModelNotFound, Unavailable
from broker.ops import queue_series, request_log, series, spend
from broker.wire import json_encoder

router = APIRouter()
STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {"console.js": "text/javascript", "console.css": "text/css", "uPlot.iife.min.js": "text/javascript",
          "uPlot.min.css": "text/css", "uPlot.LICENSE": "text/plain"}
NO_STORE = {"cache-control": "no-store"}


def _json(body: object) -> Response:
    return Response(json_encoder.encode(body), media_type="application/json", headers=NO_STORE)


def _choice(request: Request, name: str, allowed: Collection[str]) -> str | None:
    given = request.query_params.get(name) or None
    if given is not None and given not in allowed:
        raise InvalidRequest(f"Unknown {name} {given!r}.", param=name)
    return given


def _deployments(state: BrokerState) -> list[str]:
    groups = (state.config.group(name) for name in state.config.models)
    return sorted({f"{d.provider}/{d.model}" for g in groups if g is not None for d in g.deployments})


def _redis_down() -> Unavailable:
    return Unavailable("Redis does not answer: the console's figures cannot be read.", retry_after_s=1)


@router.get("/console", include_in_schema=False)
async def page(request: Request) -> Response:
    admin(request)
    return Response((STATIC / "console.html").read_bytes(), media_type="text/html", headers=NO_STORE)


@router.get("/console/assets/{name}", include_in_schema=False)
async def asset(request: Request, name: str) -> Response:
    admin(request)
    if name not in ASSETS:
        raise ModelNotFound(f"No console asset {name!r}.", code="not_found")
    return Response((STATIC / name).read_bytes(), media_type=ASSETS[name],
                    headers={"cache-control": "private, max-age=300"})


@router.get("/console/meta", include_in_schema=False)
async def meta(request: Request) -> Response:
    state = admin(request)
    config = state.config
    return _json({"tenants": sorted(config.tenants), "models": sorted(config.models),
                  "deployments": _deployments(state), "providers": sorted(config.providers),
                  "windows": list(series.WINDOWS), "rollups": state.rollups,
                  "month": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m")})


@router.get("/console/series", include_in_schema=False)
async def charts(request: Request) -> Response:
    state = admin(request)
    window = series.WINDOWS[_choice(request, "window", series.WINDOWS) or "1h"]
    tenant = _choice(request, "tenant", list(state.config.tenants))
    model = _choice(request, "model", list(state.config.models))
    deployment = _choice(request, "deployment", _deployments(state))
    providers = [deployment.split("/", 1)[0]] if deployment else list(state.config.providers)
    try:
        data = await series.read(state.redis, state.keys, [tenant] if tenant else list(state.config.tenants), window,
                                 model=model, deployment=deployment)
        data["queues"] = await queue_series.read(state.redis, state.keys, providers, window)
    except RedisError:
        raise _redis_down() from None
    return _json(data)


@router.get("/console/spend", include_in_schema=False)
async def month_spend(request: Request) -> Response:
    state = admin(request)
    tenant = _choice(request, "tenant", list(state.config.tenants))
    today = dt.datetime.now(dt.timezone.utc).date()
    month = request.query_params.get("month") or today.strftime("%Y-%m")
    try:
        spend.month_days(month, today)
    except ValueError:
        raise InvalidRequest(f"`month` must be YYYY-MM, got {month!r}.", param="month") from None
    try:
        data = await spend.read(state.redis, state.keys, state.config,
                                [tenant] if tenant else sorted(state.config.tenants), month, today)
    except RedisError:
        raise _redis_down() from None
    return _json(data)


@router.get("/console/log", include_in_schema=False)
async def recent(request: Request) -> Response:
    state = admin(request)
    q = request.query_params
    where = request_log.Filter(tenant=_choice(request, "tenant", list(state.config.tenants)),
                               model=q.get("model") or None, deployment=q.get("deployment") or None,
                               key=q.get("key") or None, failed=q.get("failed") in ("1", "true"))
    try:
        limit = int(q.get("limit") or 100)
    except ValueError:
        raise InvalidRequest("`limit` must be a whole number.", param="limit") from None
    try:
        rows = await request_log.recent(state.redis, state.keys, where, limit)
    except RedisError:
        raise _redis_down() from None
    return _json({"object": "list", "data": rows})
