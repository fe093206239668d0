"""Budgets: daily and monthly spend caps per tenant and per key, in USD, by UTC day and month.

At admission the request's worst-case cost (its estimated prompt and its output limit, at the
priciest of its candidate deployments) is held against every budget that applies, all or none,
in the same script that charges its rate limits (admit.lua, called by broker/limits/ratelimit.py), so
concurrent requests on any number of API processes can never together pass a budget. When the
job ends the worker replaces the hold with the real cost in ledger.lua, sent only by the delivery
whose finish.lua acknowledged the job, so a re-delivered job settles once.

    {ns}:budget:{tenant}:{scope}:d:{YYYY-MM-DD}        integer nano-dollars spent and held; expires
                                                       two days after the day
    {ns}:budget:{tenant}:{scope}:d:{YYYY-MM-DD}:holds  ZSET of the holds of running requests,
                                                       `<job id>:<nano-dollars>` scored by its deadline
    {ns}:budget:{tenant}:{scope}:m:{YYYY-MM}[:holds]   the same for the month; expire two days after it

`{tenant}` is the tenant's Cluster hash tag (its rate limits have it too); scope is `t`, the
tenant's own budget, or `k:<key name>`.

A hold whose job never reaches a worker's end (dropped unrun in its queue, its API process gone)
lapses at the job's deadline: the next admission against that budget gives it back.
Unpriced deployments cannot be held to a budget: their requests hold and settle nothing.
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import NamedTuple

from broker.config import ApiKey, Budgets, Tenant
from broker.errors import OverBudget
from broker.keys import Keys
from broker.money.pricing import NANOS_PER_USD, Price, usd
from broker.routing.capabilities import Request, estimate_search_units, estimate_tokens, output_limit_tokens

REMAINING_HEADER = "x-llm-broker-budget-remaining-usd"


class Budget(NamedTuple):
    counter: str
    limit_nanos: int
    expires_at: int  # unix s
    label: str  # for the error: "the tenant's daily budget ($5.00)"
    resets_at: dt.datetime


class Hold(NamedTuple):
    """What one request holds against its budgets at admission."""

    budgets: list[Budget]
    nanos: int

    def keys(self) -> list[str]:
        return [k for b in self.budgets for k in (b.counter, Keys.budget_holds(b.counter))]

    def args(self) -> list[int]:
        return [len(self.budgets), self.nanos, *(v for b in self.budgets for v in (b.limit_nanos, b.expires_at))]


def applicable(keys: Keys, tenant_name: str, tenant: Budgets, key_name: str | None, key: Budgets | None,
               now: dt.datetime) -> list[Budget]:
    day, month = now.date(), now.strftime("%Y-%m")
    tomorrow = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
    days_in_month = calendar.monthrange(now.year, now.month)[1]
    next_month = dt.datetime(now.year, now.month, days_in_month, tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    found = []
    for scope, who, limits in (("t", "the tenant's", tenant), (f"k:{key_name}", f"key {key_name!r}'s", key)):
        if limits is None:
            continue
        for amount, period, what, resets in ((limits.daily_budget_usd, f"d:{day.isoformat()}", "daily", tomorrow),
                                             (limits.monthly_budget_usd, f"m:{month}", "monthly", next_month)):
            if amount is not None:
                found.append(Budget(keys.budget(tenant_name, scope, period), round(amount * NANOS_PER_USD),
                                    int(resets.timestamp()) + 2 * 86_400, f"{who} {what} budget (${amount:,.2f})",
                                    resets))
    return found


def worst_case_nanos(req: Request, prices: list[Price | None]) -> int:
    """The most `req` may cost on any of the priced candidates (0 if none is priced)."""
    prompt, output, searches = estimate_tokens(req), output_limit_tokens(req), estimate_search_units(req)
    return max((p.estimate_nanos(prompt, output, searches) for p in prices if p is not None), default=0)


def remaining_header(left_nanos: int) -> dict[str, str]:
    return {REMAINING_HEADER: f"{usd(left_nanos):.6f}"}


def over_budget(hold: Hold, which: int, left_nanos: int, headers: dict[str, str]) -> OverBudget:
    """The 429 for a request that budget number `which` (1-based) refused."""
    refused = hold.budgets[which - 1]
    return OverBudget(f"This request would exceed {refused.label}: ${usd(left_nanos):.6f} is left and it may cost "
                      f"up to ${usd(hold.nanos):.6f}. The budget resets at {refused.resets_at:%Y-%m-%d %H:%M} UTC.",
                      retry_after_s=max(1.0, (refused.resets_at - dt.datetime.now(dt.timezone.utc)).total_seconds()),
                      headers=headers)


def hold_for(keys: Keys, tenant_name: str, tenant: Tenant, key: ApiKey | None, payload: Request,
             prices: list[Price | None]) -> Hold | None:
    """What a request must hold against its budgets (None for most: then no budget is touched).
    `key` is the key's own limits (`Principal.key`), if it has any."""
    if key is not None and not key.budgeted():
        key = None
    if not tenant.budgeted() and key is None:
        return None
    held = applicable(keys, tenant_name, tenant, key.name if key else None, key, dt.datetime.now(dt.timezone.utc))
    return Hold(held, worst_case_nanos(payload, prices)) if held else None
