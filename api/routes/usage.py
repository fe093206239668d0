"""GET /v1/usage: what the caller's tenant used and spent, from the ledger (broker/money/ledger.py).

    ?start=YYYY-MM-DD&end=YYYY-MM-DD (UTC days, inclusive; default the 30 days up to today)
    &group_by=day|model|key|deployment (several, comma-separated; default day)

Tenant-scoped: any key of a tenant sees its tenant's usage, and no other tenant's.
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.auth import credentials
from api.state import BrokerState
from broker.errors import InvalidRequest
from broker.money import ledger
from broker.wire import json_encoder

router = APIRouter()
DEFAULT_DAYS = 30


def _day(request: Request, name: str, default: dt.date) -> dt.date:
    given = request.query_params.get(name)
    if given is None:
        return default
    try:
        return dt.datetime.strptime(given, "%Y-%m-%d").date()
    except ValueError:
        raise InvalidRequest(f"`{name}` must be a date as YYYY-MM-DD, got {given!r}.", param=name) from None


def _group_by(request: Request) -> list[ledger.GroupBy]:
    given = request.query_params.get("group_by", "day")
    chosen = [g.strip() for g in given.split(",") if g.strip()]
    wrong = [g for g in chosen if g not in ledger.GROUP_BY]
    if wrong or not chosen:
        raise InvalidRequest(f"`group_by` takes {', '.join(ledger.GROUP_BY)} (comma-separated), got {given!r}.",
                             param="group_by")
    return [g for g in ledger.GROUP_BY if g in chosen]


@router.get("/v1/usage")
async def usage(request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    today = dt.datetime.now(dt.timezone.utc).date()
    end = _day(request, "end", today)
    start = _day(request, "start", end - dt.timedelta(days=DEFAULT_DAYS - 1))
    if start > end:
        raise InvalidRequest("`start` is after `end`.", param="start")
    if (end - start).days >= ledger.MAX_DAYS:
        raise InvalidRequest(f"A report spans at most {ledger.MAX_DAYS} days.", param="start")
    report = await ledger.report(state.redis, state.keys, principal.tenant_name, start, end, _group_by(request))
    return Response(json_encoder.encode(report.as_json()), media_type="application/json")
