"""The ledger's counts of a (key, model, deployment) and day in one string of 64-bit counters (ledger.lua's
BITFIELD): a job costs one command there whatever it counted, the sums stay exact to 2^63 (past what Lua's
doubles hold), and a report adds them to the per-metric fields a previous release wrote, each job once."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import time
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from broker.config import hash_key
from broker.keys import Keys
from broker.money import ledger
from broker.store.scripts import lua_script
from tests.harness import REDIS_URL, RedisServer
from tests.stacks import StackFactory

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
KEY = "sk-ledger-packed-0123456789"
DAY = "2026-12-08"


def run_ledger(client: redis.Redis, keys: Keys, prefix: str, counts: dict[str, int]) -> Any:
    """ledger.lua for one job of no budget, as job_end.lua and the Cluster path call it."""
    args: list[Any] = [prefix, 4_102_444_800, *(counts.get(m, 0) for m in ledger.METRICS),
                       counts.get("cost_nanos", 0), "job:0"]
    return client.eval(lua_script("ledger"), 2, keys.usage("acme", DAY),
                       keys.usage_counts("acme", DAY, prefix[:-1]), *args)


def report(url: str, keys: Keys, tenant: str) -> ledger.UsageReport:
    async def read() -> ledger.UsageReport:
        client = aioredis.Redis.from_url(url)
        try:
            day = dt.date.fromisoformat(DAY)
            return await ledger.report(client, keys, tenant, day, day, ["model", "deployment"])
        finally:
            await client.aclose()
    return asyncio.run(read())


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_a_job_is_one_command_added_to_the_previous_releases_fields(own_redis: RedisServer) -> None:
    client = redis.Redis.from_url(own_redis.url)
    keys = Keys("t")
    usage = keys.usage("acme", DAY)
    prefix = ledger.SEP.join(("k1", "m", "p/m", ""))
    # What a worker of the previous release counted before the upgrade: a field per metric.
    client.hset(usage, mapping={prefix + "requests": 2, prefix + "input_tokens": 30, prefix + "cost_nanos": 7})
    before = commandstats(client)
    run_ledger(client, keys, prefix, {"requests": 1, "input_tokens": 10, "output_tokens": 4, "cost_nanos": 5})
    first = commandstats(client)
    run_ledger(client, keys, prefix, {"requests": 1, "input_tokens": 11, "errors": 1, "unpriced": 1})
    second = commandstats(client)
    inside = ("bitfield", "hset", "hincrby", "hget", "expireat")
    # The group's first job: its counters, listed in the hash, both keys' expiry set. Every later one: one.
    assert {n: first.get(n, 0) - before.get(n, 0) for n in inside} == {
        "bitfield": 1, "hset": 1, "hincrby": 0, "hget": 0, "expireat": 2}
    assert {n: second.get(n, 0) - first.get(n, 0) for n in inside} == {
        "bitfield": 1, "hset": 0, "hincrby": 0, "hget": 0, "expireat": 0}
    assert 0 < client.ttl(keys.usage_counts("acme", DAY, prefix[:-1])) and 0 < client.ttl(usage)
    total = report(own_redis.url, keys, "acme").total
    assert (total.requests, total.input_tokens, total.output_tokens, total.cost_nanos, total.errors,
            total.unpriced) == (4, 51, 4, 12, 1, 1)


def test_sums_are_exact_to_2_63_and_refused_past_it(own_redis: RedisServer) -> None:
    client = redis.Redis.from_url(own_redis.url)
    keys = Keys("t")
    prefix = ledger.SEP.join(("k1", "m", "p/m", ""))
    big = 2**53 - 1  # nano-dollars: about $9M, exact as a double; one more is not
    run_ledger(client, keys, prefix, {"requests": 1, "cost_nanos": big})
    run_ledger(client, keys, prefix, {"requests": 1, "cost_nanos": 3})
    run_ledger(client, keys, prefix, {"requests": 1, "cost_nanos": big})
    total = report(own_redis.url, keys, "acme").total
    assert (total.requests, total.cost_nanos) == (3, 2 * big + 3)
    with pytest.raises(redis.ResponseError, match="2\\^63"):
        run_ledger(client, keys, prefix, {"requests": 1, "cost_nanos": 2**63 - 1})


def test_requests_through_the_broker_land_in_one_field_per_deployment(stack_factory: StackFactory,
                                                                     namespace: str) -> None:
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]},
                          tenants={"packed": {"keys": [hash_key(KEY)]}})
    base_url = stack.up("mock")
    headers = {"authorization": f"Bearer {KEY}"}
    for i in range(5):
        reply = httpx.post(f"{base_url}/chat/completions", headers=headers, timeout=10,
                           json={"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]})
        assert reply.status_code == 200, reply.text
    client = redis.Redis.from_url(REDIS_URL)
    usage = Keys(namespace).usage("packed", ledger.utc_day(time.time()))
    for _ in range(100):  # the ledger lands with the job's end, which may follow the client's answer
        total = httpx.get(f"{base_url}/usage", headers=headers).json()["total"]
        if total["requests"] == 5:
            break
        time.sleep(0.05)
    assert total["requests"] == 5 and total["output_tokens"] == 15
    fields = client.hgetall(usage)
    assert len(fields) == 1 and next(iter(fields)).endswith(b"\t#"), fields
    group = next(iter(fields)).decode()[:-2]
    assert 0 < client.strlen(Keys(namespace).usage_counts("packed", usage.rsplit(":", 1)[1], group)) <= 9 * 8
