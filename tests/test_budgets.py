"""Budgets: worst-case cost reserved at the door atomically across API processes, settled at the end."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import openai
import pytest
import redis

from broker.budgets import applicable
from broker.config import Tenant, hash_key
from broker.keys import Keys
from tests.conftest import REDIS_URL, TEST_KEY

DOLLAR_A_TOKEN = {"input_per_mtok": 1_000_000.0, "output_per_mtok": 1_000_000.0}


def test_budgets_roll_over_with_the_utc_day_and_month() -> None:
    tenant = Tenant(keys=[], daily_budget_usd=5, monthly_budget_usd=100)
    keys = Keys("ns")
    last = applicable(keys, "acme", tenant, None, None, dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.timezone.utc))
    first = applicable(keys, "acme", tenant, None, None, dt.datetime(2027, 1, 1, 0, 0, tzinfo=dt.timezone.utc))
    assert [b.counter for b in last] == ["ns:budget:t:acme:d:2026-12-31", "ns:budget:t:acme:m:2026-12"]
    assert [b.counter for b in first] == ["ns:budget:t:acme:d:2027-01-01", "ns:budget:t:acme:m:2027-01"]
    assert {b.resets_at for b in last} == {dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)}
    assert [b.limit_nanos for b in last] == [5 * 10**9, 100 * 10**9]
    february = applicable(keys, "acme", tenant, None, None, dt.datetime(2028, 2, 10, tzinfo=dt.timezone.utc))
    assert february[1].resets_at == dt.datetime(2028, 3, 1, tzinfo=dt.timezone.utc)  # a leap year's February


def test_a_budget_holds_under_200_concurrent_requests_on_two_api_processes(stack_factory: Any,
                                                                            namespace: str) -> None:
    # Each request may cost up to $13 (3 estimated prompt tokens + max_tokens 10, at $1 a token) and costs $5
    # (1 prompt word + 4 output words). $130 a day fits exactly 10 of them at the door.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 4, "first_token_delay_s": 1.5}},
                          {"m": [{"provider": "mock", "model": "m", **DOLLAR_A_TOKEN}]},
                          tenants={"test": {"keys": [hash_key(TEST_KEY)], "daily_budget_usd": 130}})
    stack.worker("mock", "--concurrency", "256")
    base_url = stack.api(workers=2)

    async def main() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)

        async def one() -> Any:
            try:
                return await client.chat.completions.create(model="m", max_tokens=10,
                                                            messages=[{"role": "user", "content": "hi"}])
            except openai.RateLimitError as exc:
                return exc
        try:
            return await asyncio.gather(*(one() for _ in range(200)))
        finally:
            await client.close()

    answers = asyncio.run(main())
    served = [a for a in answers if not isinstance(a, Exception)]
    refused = [a for a in answers if isinstance(a, openai.RateLimitError)]
    assert len(served) == 10 and len(refused) == 190
    assert all(e.code == "insufficient_quota" and "daily budget ($130.00)" in e.message for e in refused)
    assert refused[0].response.headers["x-should-retry"] == "false"
    assert sum(a.usage.cost for a in served) == pytest.approx(50.0)  # type: ignore[attr-defined]
    # Settled with the real cost: the counter now holds what was spent, and the rest is free again.
    counter = Keys(namespace).budget("t:test", f"d:{dt.datetime.now(dt.timezone.utc).date().isoformat()}")
    r = redis.Redis.from_url(REDIS_URL)
    end = time.monotonic() + 5
    while int(r.get(counter) or 0) != 50 * 10**9:
        assert time.monotonic() < end, r.get(counter)
        time.sleep(0.05)
    assert 0 < r.ttl(counter) <= 3 * 86_400
    again = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0).chat.completions.with_raw_response
    raw = again.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert float(raw.headers["x-llm-broker-budget-remaining-usd"]) == pytest.approx(130 - 50 - 13)


def test_a_keys_budget_binds_inside_its_tenants_and_a_request_never_queued_is_refunded(
    stack_factory: Any, namespace: str
) -> None:
    ci_key = "sk-ci-key-0001"
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 4}, "idle": {"kind": "mock"}},
                          {"m": [{"provider": "mock", "model": "m", **DOLLAR_A_TOKEN}],
                           "nobody": [{"provider": "idle", "model": "x", **DOLLAR_A_TOKEN}]},
                          tenants={"test": {"keys": [{"key": hash_key(ci_key), "name": "ci", "daily_budget_usd": 13}],
                                            "monthly_budget_usd": 1000}})
    stack.worker("mock")  # and none for `idle`
    client = openai.OpenAI(base_url=stack.api(), api_key=ci_key, max_retries=0)
    ask = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(openai.InternalServerError):  # 503: no worker serves `idle`; nothing was spent
        client.chat.completions.create(model="nobody", **ask)  # type: ignore[call-overload]
    client.chat.completions.create(model="m", **ask)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError) as info:  # $5 spent, $13 may be needed: over the key's $13
        client.chat.completions.create(model="m", **ask)  # type: ignore[call-overload]
    assert info.value.code == "insufficient_quota" and "key 'ci''s daily budget ($13.00)" in info.value.message
    month = Keys(namespace).budget("t:test", f"m:{dt.datetime.now(dt.timezone.utc):%Y-%m}")
    end = time.monotonic() + 5
    while int(redis.Redis.from_url(REDIS_URL).get(month) or 0) != 5 * 10**9:  # the refusals reserved nothing
        assert time.monotonic() < end
        time.sleep(0.05)
