"""Budgets: daily and monthly spend caps per tenant and per key, in USD, by UTC day and month.

At admission the API reserves the request's worst-case cost (its estimated prompt and its output
limit, at the priciest of its candidate deployments) against every budget that applies, all or
none, in one script call (budget.lua), so concurrent requests on any number of API processes can
never together pass a budget. When the job ends the worker settles the reservation with the real
cost inside finish.lua, under the ledger's XACK guard, so a re-delivered job settles once.

    {ns}:budget:{scope}:d:{YYYY-MM-DD}   integer nano-dollars; expires two days after the day
    {ns}:budget:{scope}:m:{YYYY-MM}      the same for the month; expires two days after it

Unpriced deployments cannot be held to a budget: their requests reserve and settle nothing.
A job dropped unrun in the queue (its client left, its deadline passed) keeps its reservation
until the counter expires: budgets err on the side of refusing.
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import NamedTuple

from redis.asyncio import Redis

from broker.capabilities import Request, estimate_tokens
from broker.config import Budgets
from broker.errors import OverBudget
from broker.keys import Keys
from broker.pricing import NANOS_PER_USD, Price, usd
from broker.ratelimit import DEFAULT_OUTPUT_TOKENS  # a request without an output limit, as admission counts it
from broker.scripts import lua_script
from broker.wire import ChatRequest, CompletionRequest

REMAINING_HEADER = "x-llm-broker-budget-remaining-usd"
BUDGET = lua_script("budget")


class Budget(NamedTuple):
    counter: str
    limit_nanos: int
    expires_at: int  # unix s
    label: str  # for the error: "the tenant's daily budget ($5.00)"
    resets_at: dt.datetime


class Reservation(NamedTuple):
    counters: list[str]
    nanos: int
    headers: dict[str, str]


def applicable(keys: Keys, tenant_name: str, tenant: Budgets, key_name: str | None, key: Budgets | None,
               now: dt.datetime) -> list[Budget]:
    day, month = now.date(), now.strftime("%Y-%m")
    tomorrow = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
    days_in_month = calendar.monthrange(now.year, now.month)[1]
    next_month = dt.datetime(now.year, now.month, days_in_month, tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    found = []
    for scope, who, limits in (("t:" + tenant_name, "the tenant's", tenant),
                               (f"k:{tenant_name}:{key_name}", f"key {key_name!r}'s", key)):
        if limits is None:
            continue
        for amount, period, what, resets in ((limits.daily_budget_usd, f"d:{day.isoformat()}", "daily", tomorrow),
                                             (limits.monthly_budget_usd, f"m:{month}", "monthly", next_month)):
            if amount is not None:
                found.append(Budget(keys.budget(scope, period), round(amount * NANOS_PER_USD),
                                    int(resets.timestamp()) + 2 * 86_400, f"{who} {what} budget (${amount:,.2f})",
                                    resets))
    return found


def worst_case_nanos(req: Request, prices: list[Price | None]) -> int:
    known = [p for p in prices if p is not None]
    if not known:
        return 0
    limit = req.output_limit() if isinstance(req, ChatRequest | CompletionRequest) else 0
    output = DEFAULT_OUTPUT_TOKENS if limit is None else limit
    prompt = estimate_tokens(req)
    return max(round((prompt * p.input + output * p.output) * 1000) for p in known)


async def reserve(redis: Redis, budgets: list[Budget], nanos: int) -> Reservation:
    """Reserve `nanos` against every budget, or raise OverBudget (429 insufficient_quota) reserving nothing."""
    args: list[int] = [nanos]
    for b in budgets:
        args += [b.limit_nanos, b.expires_at]
    ok, which, left = await redis.eval(BUDGET, len(budgets), *(b.counter for b in budgets), *args)
    headers = {REMAINING_HEADER: f"{usd(int(left)):.6f}"}
    if not int(ok):
        refused = budgets[int(which) - 1]
        raise OverBudget(f"This request would exceed {refused.label}: ${usd(int(left)):.6f} is left and it may cost "
                         f"up to ${usd(nanos):.6f}. The budget resets at {refused.resets_at:%Y-%m-%d %H:%M} UTC.",
                         retry_after_s=max(1.0, (refused.resets_at - dt.datetime.now(dt.timezone.utc)).total_seconds()),
                         headers=headers)
    return Reservation([b.counter for b in budgets], nanos, headers)


async def refund(redis: Redis, reservation: Reservation, budgets: list[Budget]) -> None:
    """The request was refused before it was queued: give its reservation back."""
    args: list[int] = [-reservation.nanos]
    for b in budgets:
        args += [b.limit_nanos, b.expires_at]
    await redis.eval(BUDGET, len(budgets), *(b.counter for b in budgets), *args)
