"""Budgets: worst-case cost reserved at the door atomically across API processes, settled at the end."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import openai
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from broker.config import Tenant, UsageSettings, hash_key
from broker.errors import OverBudget, RateLimited
from broker.keys import Keys
from broker.limits import ratelimit
from broker.limits.ratelimit import Limiter
from broker.money import ledger
from broker.money.budgets import Hold, applicable
from broker.money.pricing import Charge
from broker.queue.jobs import Job
from broker.queue.payloads import EmbeddingPayload
from broker.queue.outbox import Outbox
from broker.queue.streams import QueueScripts
from broker.wire.embeddings import EmbeddingRequest
from tests.harness import REDIS_URL, TEST_KEY
from tests.stacks import StackFactory

DOLLAR_A_TOKEN = {"input_per_mtok": 1_000_000.0, "output_per_mtok": 1_000_000.0}


def test_budgets_roll_over_with_the_utc_day_and_month() -> None:
    tenant = Tenant(keys=[], daily_budget_usd=5, monthly_budget_usd=100)
    keys = Keys("ns")
    last = applicable(keys, "acme", tenant, None, None, dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.timezone.utc))
    first = applicable(keys, "acme", tenant, None, None, dt.datetime(2027, 1, 1, 0, 0, tzinfo=dt.timezone.utc))
    assert [b.counter for b in last] == ["ns:budget:{acme}:t:d:2026-12-31", "ns:budget:{acme}:t:m:2026-12"]
    assert [b.counter for b in first] == ["ns:budget:{acme}:t:d:2027-01-01", "ns:budget:{acme}:t:m:2027-01"]
    assert {b.resets_at for b in last} == {dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)}
    assert [b.limit_nanos for b in last] == [5 * 10**9, 100 * 10**9]
    february = applicable(keys, "acme", tenant, None, None, dt.datetime(2028, 2, 10, tzinfo=dt.timezone.utc))
    assert february[1].resets_at == dt.datetime(2028, 3, 1, tzinfo=dt.timezone.utc)  # a leap year's February


def test_a_budget_holds_under_200_concurrent_requests_on_two_api_processes(stack_factory: StackFactory,
                                                                            namespace: str) -> None:
    # Each request may cost up to $13 (3 estimated prompt tokens + max_tokens 10, at $1 a token) and costs $5
    # (1 prompt word + 4 output words). $130 a day fits exactly 10 of them at the door.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 4, "first_token_delay_s": 1.5}},
                          {"m": [{"provider": "mock", "model": "m", **DOLLAR_A_TOKEN}]},
                          tenants={"test": {"keys": [hash_key(TEST_KEY)], "daily_budget_usd": 130}})
    base_url = stack.up(("mock", "--concurrency", "256"), apis=(2,))

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
    counter = Keys(namespace).budget("test", "t", f"d:{dt.datetime.now(dt.timezone.utc).date().isoformat()}")
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
    stack_factory: StackFactory, namespace: str
) -> None:
    ci_key = "sk-ci-key-0001"
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 4}, "idle": {"kind": "mock"}},
                          {"m": [{"provider": "mock", "model": "m", **DOLLAR_A_TOKEN}],
                           "nobody": [{"provider": "idle", "model": "x", **DOLLAR_A_TOKEN}]},
                          tenants={"test": {"keys": [{"key": hash_key(ci_key), "name": "ci", "daily_budget_usd": 13}],
                                            "monthly_budget_usd": 1000}})
    client = openai.OpenAI(base_url=stack.up("mock"), api_key=ci_key, max_retries=0)  # no worker for `idle`
    ask = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(openai.InternalServerError):  # 503: no worker serves `idle`; nothing was spent
        client.chat.completions.create(model="nobody", **ask)  # type: ignore[call-overload]
    client.chat.completions.create(model="m", **ask)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError) as info:  # $5 spent, $13 may be needed: over the key's $13
        client.chat.completions.create(model="m", **ask)  # type: ignore[call-overload]
    assert info.value.code == "insufficient_quota" and "key 'ci''s daily budget ($13.00)" in info.value.message
    month = Keys(namespace).budget("test", "t", f"m:{dt.datetime.now(dt.timezone.utc):%Y-%m}")
    end = time.monotonic() + 5
    while int(redis.Redis.from_url(REDIS_URL).get(month) or 0) != 5 * 10**9:  # the refusals reserved nothing
        assert time.monotonic() < end
        time.sleep(0.05)


@pytest.fixture
async def limiter(namespace: str) -> Any:
    client = AsyncRedis.from_url(REDIS_URL)
    yield Limiter(client, Keys(namespace))
    await client.aclose()


def held(limiter: Limiter, tenant: Tenant) -> Hold:
    return Hold(applicable(limiter.keys, "t", tenant, None, None, dt.datetime.now(dt.timezone.utc)), 8 * 10**9)


async def spent(limiter: Limiter, hold: Hold) -> tuple[int, int]:
    """A budget's counter, and how many holds it has."""
    counter = hold.budgets[0].counter
    return (int(await limiter.redis.get(counter) or 0),
            int(await limiter.redis.zcard(Keys.budget_holds(counter))))


async def test_a_budget_and_the_rate_limits_are_charged_in_one_step_all_or_none(limiter: Limiter) -> None:
    tenant = Tenant(keys=[], rpm=100, daily_budget_usd=10)
    hold = held(limiter, tenant)
    first = await limiter.admit("t", tenant, 1, "a", time.time() + 60, hold=hold)
    assert first.budget_nanos == 8 * 10**9 and float(first.headers["x-llm-broker-budget-remaining-usd"]) == 2
    rpm_bucket = await limiter.redis.get(limiter.keys.rate_requests("t"))
    with pytest.raises(OverBudget) as refused:  # the budget refuses: the RPM bucket is not charged
        await limiter.admit("t", tenant, 1, "b", time.time() + 60, hold=hold)
    assert await limiter.redis.get(limiter.keys.rate_requests("t")) == rpm_bucket
    assert refused.value.headers["x-llm-broker-budget-remaining-usd"] == "2.000000"
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "99"
    assert await spent(limiter, hold) == (8 * 10**9, 1)

    strict = Tenant(keys=[], rpm=1, daily_budget_usd=100)
    hold = Hold(applicable(limiter.keys, "u", strict, None, None, dt.datetime.now(dt.timezone.utc)), 10**9)
    await limiter.admit("u", strict, 1, "c", time.time() + 60, hold=hold)
    with pytest.raises(RateLimited) as info:  # the RPM refuses: nothing is held against the budget
        await limiter.admit("u", strict, 1, "d", time.time() + 60, hold=hold)
    assert not isinstance(info.value, OverBudget)
    assert await spent(limiter, hold) == (10**9, 1)


async def test_a_hold_whose_job_never_ends_lapses_at_its_deadline(limiter: Limiter,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A job dropped unrun (its client left, its deadline passed) never reaches finish.lua: its hold
    # must not keep the budget spent until the day ends.
    monkeypatch.setattr(ratelimit, "SLOT_GRACE_S", 0.0)
    tenant = Tenant(keys=[], daily_budget_usd=10)
    hold = held(limiter, tenant)
    await limiter.admit("t", tenant, 1, "dropped", time.time() + 0.3, hold=hold)
    with pytest.raises(OverBudget):
        await limiter.admit("t", tenant, 1, "next", time.time() + 60, hold=hold)
    await asyncio.sleep(0.4)
    await limiter.admit("t", tenant, 1, "next", time.time() + 60, hold=hold)
    assert await spent(limiter, hold) == (8 * 10**9, 1)  # the lapsed hold given back, the new one held


async def test_a_request_refused_after_admission_gives_its_hold_back(limiter: Limiter) -> None:
    tenant = Tenant(keys=[], daily_budget_usd=10)
    hold = held(limiter, tenant)
    admission = await limiter.admit("t", tenant, 1, "refused", time.time() + 60, hold=hold)
    await limiter.refund(admission)
    await limiter.refund(admission)  # twice (a retry of the refund) gives back once
    assert await spent(limiter, hold) == (0, 0)


async def test_the_end_of_a_job_replaces_its_hold_with_its_cost_even_after_it_lapsed(
    limiter: Limiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "SLOT_GRACE_S", 0.0)
    tenant = Tenant(keys=[], daily_budget_usd=10)
    hold = held(limiter, tenant)
    r, ns = limiter.redis, limiter.keys.ns

    outbox = Outbox(r, limiter.keys, QueueScripts(r), result_ttl_s=60, tenants={}, usage=UsageSettings())
    outbox.start()

    async def end(job_id: str, admission: ratelimit.Admission, cost: int) -> None:
        """The worker's end of a job it pulled from its stream, costing `cost` nano-dollars, sent twice
        (as by a job delivered twice): finish.lua acknowledges it once, so ledger.lua counts it once."""
        job = Job(id=job_id, tenant="t", model="m", provider="p", upstream_model="m", reply_to=f"{ns}:r",
                  created=0, deadline=0, budget_counters=admission.budget_counters,
                  budget_reserved=admission.budget_nanos, payload=EmbeddingPayload(EmbeddingRequest(model="m", input="x")))
        stream = f"{ns}:{{p}}:q:default:t"
        if not await r.exists(stream):  # an emptied stream stays until a pull.lua turn retires it
            await r.xgroup_create(stream, "workers", id="0", mkstream=True)
        entry = await r.xadd(stream, {"j": b""})
        await r.xreadgroup("workers", "w", {stream: ">"})
        counted = ledger.entry(limiter.keys, job, Charge(cost_nanos=cost), "ok", time.time(), UsageSettings())
        for _ in range(2):
            await outbox.finish(job, entry, stream, body=b"{}", ledger=counted)
        assert await outbox.settled(5)  # on a Cluster the ledger rides the pipeline after the end's

    running = await limiter.admit("t", tenant, 1, "running", time.time() + 60, hold=hold)
    await end("running", running, 3 * 10**9)  # $8 held, $3 spent
    assert await spent(limiter, hold) == (3 * 10**9, 0)
    slow = Hold(hold.budgets, 2 * 10**9)
    late = await limiter.admit("t", tenant, 1, "late", time.time() + 0.2, hold=slow)
    await asyncio.sleep(0.3)
    await limiter.admit("t", tenant, 1, "other", time.time() + 60, hold=slow)  # gives the lapsed hold back
    assert await spent(limiter, hold) == (5 * 10**9, 1)
    await end("late", late, 10**9)  # the late job's real cost still counts, once
    assert await spent(limiter, hold) == (6 * 10**9, 1)
    await outbox.aclose()


async def test_on_one_redis_a_ledger_that_fails_leaves_the_end_whole(limiter: Limiter) -> None:
    # On one Redis a job's end is one job_end.lua call (broker/queue/outbox.py); its ledger part failing
    # (here: the day's usage key is not a hash) must not fail what its client already has: the reply is
    # published, the result stored, the entry acknowledged, the usage-log record written, the call answered.
    r, keys = limiter.redis, limiter.keys
    outbox = Outbox(r, keys, QueueScripts(r), result_ttl_s=60, tenants={}, usage=UsageSettings())
    outbox.start()
    job = Job(id="broken-ledger", tenant="t", model="m", provider="p", upstream_model="m", reply_to=f"{keys.ns}:r",
              created=0, deadline=0, payload=EmbeddingPayload(EmbeddingRequest(model="m", input="x")))
    stream = keys.queue("p", "default", "t")
    await r.xgroup_create(stream, "workers", id="0", mkstream=True)
    entry = await r.xadd(stream, {"j": b""})
    await r.xreadgroup("workers", "w", {stream: ">"})
    counted = ledger.entry(keys, job, Charge(cost_nanos=10), "ok", time.time(), UsageSettings())
    await r.set(counted.keys[0], "not a hash")
    pubsub = r.pubsub()
    await pubsub.subscribe(job.reply_to)
    try:
        await outbox.finish(job, entry, stream, body=b"{}", ledger=counted)
        assert await outbox.settled(5)
        message = None
        while message is None or message["type"] != "message":
            message = await pubsub.get_message(timeout=2)
        assert message["data"] == await r.get(keys.result(job.id))
        assert await r.xlen(stream) == 0  # acknowledged and deleted
        assert (await r.xpending(stream, "workers"))["pending"] == 0
        assert [job.id.encode() in fields[b"r"] for _, fields in await r.xrange(keys.usage_log())] == [True]
        assert await r.get(counted.keys[0]) == b"not a hash"
    finally:
        await pubsub.aclose()
        await outbox.aclose()
