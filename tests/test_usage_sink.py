"""The usage ledger's durable sink: records reach a real PostgreSQL, once each."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest
from redis.asyncio import Redis as AsyncRedis

from broker.config import UsageSettings
from broker.config.types import Secret
from broker.keys import Keys
from broker.money.ledger import UsageRecord, record_decoder, record_encoder
from broker.money.usage_sink import UsageSink, ddl, row
from tests.harness import REDIS_URL, TEST_KEY
from tests.stacks import StackFactory

asyncpg = pytest.importorskip("asyncpg")
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


async def _reachable() -> str | None:
    try:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


UNREACHABLE = asyncio.run(_reachable())
pytestmark = pytest.mark.skipif(UNREACHABLE is not None,
                                reason=f"no PostgreSQL at {POSTGRES_URL} to prove the sink against ({UNREACHABLE})")


async def rows(table: str, query: str = "") -> list[Any]:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        return list(await conn.fetch(f"SELECT * FROM {table} {query}"))
    finally:
        await conn.close()


async def drop(table: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    await conn.execute(f"DROP TABLE IF EXISTS {table}")
    await conn.close()


def test_every_answered_request_lands_in_postgres_with_its_cost(stack_factory: StackFactory, namespace: str) -> None:
    table = "t_" + namespace.replace("-", "_")
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3}},
                          {"m": [{"provider": "mock", "model": "m", "input_per_mtok": 2.0, "output_per_mtok": 8.0}]},
                          usage={"postgres_url": POSTGRES_URL, "postgres_table": table})
    client = openai.OpenAI(base_url=stack.up("mock"), api_key=TEST_KEY, max_retries=0)
    costs = {}
    try:
        for i in range(5):
            completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"bill {i}"}])
            assert completion.usage is not None
            costs[completion.id.removeprefix("chatcmpl-")] = completion.usage.cost  # type: ignore[attr-defined]
        end = time.monotonic() + 10
        while len(found := asyncio.run(rows(table))) < 5:
            assert time.monotonic() < end, found
            time.sleep(0.1)
        assert {r["job_id"]: r["cost_nanos"] / 1e9 for r in found} == pytest.approx(costs)
        assert {(r["tenant"], r["model"], r["deployment"], r["outcome"]) for r in found} == {("test", "m", "mock/m", "ok")}
    finally:
        asyncio.run(drop(table))


async def test_a_batch_copied_twice_counts_once(namespace: str) -> None:
    # A sink that dies after its insert but before its XACK: another claims the batch and inserts it again.
    table = "t_" + namespace.replace("-", "_")
    redis, keys = AsyncRedis.from_url(REDIS_URL), Keys(namespace)
    sink = UsageSink(redis, keys, UsageSettings(postgres_url=Secret(POSTGRES_URL), postgres_table=table), "a")
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(ddl(table))
        await sink._ensure_group()
        for i in range(3):
            record = UsageRecord(f"job{i}", time.time(), "t", "k", "m", "p/m", "ok", 10, 5, 0, 1234, False)
            await redis.xadd(keys.usage_log(), {"r": record_encoder.encode(record)})
        assert await sink.copy_once(conn) == 3
        # The same records again, as a claim after a crash would bring them.
        entries = await redis.xrange(keys.usage_log())
        await conn.executemany(sink.insert, [row(record_decoder.decode(f[b"r"])) for _, f in entries])
        assert len(await conn.fetch(f"SELECT * FROM {table}")) == 3
        assert await sink.copy_once(conn) == 0  # all acknowledged: nothing left to copy
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
        await redis.aclose()
