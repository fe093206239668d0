"""An upgrade moves usage, budget and batch keys of the old key layout to their hash-tagged names
(broker/store/key_migration.py), on real Redis: spend, usage history and batches in progress survive it."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from broker.keys import Keys
from broker.store import key_migration
from broker.store.connection import connect
from tests.harness import REDIS_URL


def test_old_names_map_to_their_tagged_ones_and_nothing_else_does() -> None:
    assert key_migration.new_name("ns", "ns:usage:acme:2026-11-28") == "ns:usage:{acme}:2026-11-28"
    assert key_migration.new_name("ns", "ns:budget:t:acme:d:2026-11-28") == "ns:budget:{acme}:t:d:2026-11-28"
    assert key_migration.new_name("ns", "ns:budget:k:acme:ci:m:2026-11:holds") == "ns:budget:{acme}:k:ci:m:2026-11:holds"
    assert key_migration.new_name("ns", "ns:batch:batch_ab12:inflight") == "ns:batch:{batch_ab12}:inflight"
    for current in ("ns:usage:log", "ns:usage:{acme}:2026-11-28", "ns:budget:{acme}:t:d:2026-11-28",
                    "ns:batch:{batch_ab12}", "ns:batches:acme", "other:usage:acme:2026-11-28"):
        assert key_migration.new_name("ns", current) is None, current


def test_an_upgrade_moves_old_keys_and_merges_into_new_ones_once(namespace: str) -> None:
    keys = Keys(namespace)
    ns = namespace

    async def main() -> None:
        redis: Redis = connect(REDIS_URL)
        await redis.hset(f"{ns}:usage:acme:2026-11-28", mapping={"k\tm\td\trequests": 3, "k\tm\td\tcost_nanos": 50})
        await redis.expire(f"{ns}:usage:acme:2026-11-28", 1000)
        # A process of the new version already counted one request of the same day under the new name.
        await redis.hset(keys.usage("acme", "2026-11-28"), mapping={"k\tm\td\trequests": 1})
        await redis.set(f"{ns}:budget:t:acme:d:2026-11-28", 7_000, ex=500)
        await redis.zadd(f"{ns}:budget:t:acme:d:2026-11-28:holds", {"job1:2000": 123})
        await redis.set(f"{ns}:budget:k:acme:ci:m:2026-11", 9_000)
        await redis.hset(f"{ns}:batch:batch_ab12", mapping={"line": 40})
        await redis.setbit(f"{ns}:batch:batch_ab12:done", 5, 1)

        assert await key_migration.migrate(redis, keys, REDIS_URL) == 6
        usage = await redis.hgetall(keys.usage("acme", "2026-11-28"))
        assert usage == {b"k\tm\td\trequests": b"4", b"k\tm\td\tcost_nanos": b"50"}
        assert 900 < await redis.ttl(keys.usage("acme", "2026-11-28")) <= 1000  # kept the old key's expiry
        assert await redis.get(keys.budget("acme", "t", "d:2026-11-28")) == b"7000"
        assert 0 < await redis.ttl(keys.budget("acme", "t", "d:2026-11-28")) <= 500
        holds = keys.budget_holds(keys.budget("acme", "t", "d:2026-11-28"))
        assert await redis.zrange(holds, 0, -1, withscores=True) == [(b"job1:2000", 123.0)]
        assert await redis.get(keys.budget("acme", "k:ci", "m:2026-11")) == b"9000"
        assert await redis.hget(keys.batch("batch_ab12"), "line") == b"40"
        assert await redis.getbit(keys.batch("batch_ab12") + ":done", 5) == 1
        assert not await redis.keys(f"{ns}:usage:acme:*") and not await redis.keys(f"{ns}:budget:t:*")
        # Done once: the layout is recorded, and a later start moves nothing, even a stray old key.
        await redis.set(f"{ns}:budget:t:acme:d:2026-11-29", 1)
        assert await key_migration.migrate(redis, keys, REDIS_URL) == 0
        assert await redis.get(keys.layout()) == b"2"
        await redis.aclose()

    asyncio.run(main())
