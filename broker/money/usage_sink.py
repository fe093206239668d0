"""Durable usage records in PostgreSQL (config `usage.postgres_url`), for billing.

The ledger's export stream (`{ns}:usage:log`, broker/money/ledger.py) is copied into one table in
batches. Every worker process runs a sink when it is configured; they share the stream through
the consumer group "usage-sink", so each record is inserted by one of them. Records are
acknowledged only once their batch is committed. A sink that dies leaves its records pending,
and another claims them after CLAIM_IDLE_MS. Inserts are idempotent (the job id is the primary
key), so a batch inserted twice counts once. The table is created on start.

asyncpg, not psycopg: it is asyncio-native like the rest of the worker, and its executemany sends
a batch in one round trip with the binary protocol.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from broker.config import UsageSettings
from broker.keys import Keys
from broker.money.ledger import UsageRecord, record_decoder

log = logging.getLogger(__name__)

GROUP = "usage-sink"
BATCH = 500
CLAIM_IDLE_MS = 60_000  # a record pending this long belongs to a sink that died
RETRY_S = 2.0

COLUMNS = ("job_id", "at", "tenant", "key", "model", "deployment", "outcome", "input_tokens", "output_tokens",
           "cached_tokens", "cost_nanos", "estimated")


def ddl(table: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {table} (job_id text PRIMARY KEY, at timestamptz NOT NULL, "
            "tenant text NOT NULL, key text NOT NULL, model text NOT NULL, deployment text NOT NULL, "
            "outcome text NOT NULL, input_tokens bigint NOT NULL, output_tokens bigint NOT NULL, "
            "cached_tokens bigint NOT NULL, cost_nanos bigint, estimated boolean NOT NULL)")


def row(record: UsageRecord) -> tuple[Any, ...]:
    return (record.job_id, datetime.fromtimestamp(record.at, timezone.utc), record.tenant, record.key, record.model,
            record.deployment, record.outcome, record.input_tokens, record.output_tokens, record.cached_tokens,
            record.cost_nanos, record.estimated)


class UsageSink:
    def __init__(self, redis: Redis, keys: Keys, settings: UsageSettings, consumer: str) -> None:
        assert settings.postgres_url is not None
        self.redis = redis
        self.stream = keys.usage_log()
        self.url = settings.postgres_url.reveal()
        self.table = settings.postgres_table
        self.consumer = consumer
        self.insert = (f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) VALUES "
                       f"({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) ON CONFLICT (job_id) DO NOTHING")

    async def run(self) -> None:
        """Copy records until cancelled; Redis or PostgreSQL being away pauses it, never ends it."""
        import asyncpg  # type: ignore[import-untyped]

        while True:
            try:
                conn = await asyncpg.connect(self.url)
                try:
                    await conn.execute(ddl(self.table))
                    await self._ensure_group()
                    while True:
                        await self.copy_once(conn, block_ms=1000)
                finally:
                    await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the URL's password stays out of the log: only the error's type and text
                log.warning("usage sink paused (%s: %s); retrying in %.0fs", type(exc).__name__, exc, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def copy_once(self, conn: Any, *, block_ms: int | None = None) -> int:
        """One batch: records a dead sink left pending, else new ones; returns how many were copied."""
        # Any: redis-py's hints for stream replies do not describe what RESP2 returns.
        autoclaimed: Any = await self.redis.xautoclaim(self.stream, GROUP, self.consumer, CLAIM_IDLE_MS, "0-0",
                                                       count=BATCH)
        entries: list[Any] = [e for e in autoclaimed[1] if e and e[1]]
        if not entries:
            found: Any = await self.redis.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=BATCH, block=block_ms)
            entries = found[0][1] if found else []
        if not entries:
            return 0
        rows = [row(record_decoder.decode(fields[b"r"])) for _, fields in entries if b"r" in fields]
        if rows:
            await conn.executemany(self.insert, rows)
        await self.redis.xack(self.stream, GROUP, *(entry_id for entry_id, _ in entries))
        return len(rows)
