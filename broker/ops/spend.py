"""The console's spend: a month's cost per UTC day, by tenant, model and key, beside the budgets.

Every figure is the ledger's (broker/money/ledger.py `report`, the function GET /v1/usage answers
with), summed in integer nano-dollars, so a tenant's day here equals its /v1/usage day to the
nano-dollar. Budgets (broker/money/budgets.py) are the config's and the run-time keys' (broker/api_keys.py).
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any

from redis.asyncio import Redis

from broker import api_keys
from broker.config import Config
from broker.keys import Keys
from broker.money import ledger
from broker.money.pricing import usd


def month_days(month: str, today: dt.date) -> tuple[dt.date, dt.date]:
    """The month's first day and its last (today, for this month); ValueError for anything but YYYY-MM."""
    first = dt.datetime.strptime(month, "%Y-%m").date()
    last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
    return first, min(last, today) if first <= today else last


async def read(redis: Redis, keys: Keys, config: Config, tenants: list[str], month: str,
               today: dt.date) -> dict[str, Any]:
    first, last = month_days(month, today)
    rows: list[dict[str, Any]] = []
    for tenant in tenants:
        report = await ledger.report(redis, keys, tenant, first, last, ["day", "model", "key"])
        rows += [{"day": r.day, "tenant": tenant, "model": r.model, "key": r.key, "requests": r.requests,
                  "cost_nanos": r.cost_nanos, "cost_usd": usd(r.cost_nanos)} for r in report.data if r.requests]
    budgets: list[dict[str, Any]] = []
    for tenant in tenants:
        limits = config.tenants[tenant]
        if limits.budgeted():
            budgets.append({"tenant": tenant, "key": None, "daily_usd": limits.daily_budget_usd,
                            "monthly_usd": limits.monthly_budget_usd})
    for info in await api_keys.listing(redis, keys, config):
        if info.tenant in tenants and (info.daily_budget_usd is not None or info.monthly_budget_usd is not None):
            budgets.append({"tenant": info.tenant, "key": info.name, "daily_usd": info.daily_budget_usd,
                            "monthly_usd": info.monthly_budget_usd})
    return {"month": month, "days": ledger.days(first, last), "rows": rows, "budgets": budgets}
