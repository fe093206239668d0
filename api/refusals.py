"""Requests the API refused before any worker saw them, for the console: counted in its series and
listed in its request log.

A refusal by a rate limit or a budget (admit.lua), or at admission (no live worker, an open circuit,
a full lane: enqueue.lua), never reaches the ledger, so this process records it. Not in the refused
request's own path: `note` only appends to a buffer, and one task sends what gathered once every
FLUSH_S in one pipeline (the rollup counts, broker/ops/rollups.py, and the usage log's records). A
refusal storm thus costs Redis one round trip a second per API process; past LOG_PER_FLUSH
refusals in a second the rest are counted but not listed one by one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from redis.asyncio import Redis
from redis.exceptions import RedisError

from broker.config import UsageSettings
from broker.errors import BrokerError, OverBudget
from broker.keys import Keys
from broker.money.ledger import UsageRecord, record_encoder
from broker.ops import rollups
from broker.ops.redaction import redact
from broker.queue.jobs import Job

log = logging.getLogger(__name__)

FLUSH_S = 1.0
LOG_PER_FLUSH = 200


def cause(error: BrokerError, *, queued: bool) -> str:
    """Which of rollups.REFUSAL_CAUSES a refusal is: `queued` when enqueueing refused it."""
    return "admission" if queued else "budget" if isinstance(error, OverBudget) else "rate_limit"


class Refusals:
    def __init__(self, redis: Redis, keys: Keys, usage: UsageSettings) -> None:
        self.redis = redis
        self.keys = keys
        self.usage = usage
        self._counts: Counter[tuple[str, float, str]] = Counter()  # (tenant, minute, field) → refusals
        self._records: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="refusals")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush()

    def note(self, job: Job, error: BrokerError, cause: str) -> None:
        now = time.time()
        deployment = job.served_by if cause == "admission" else rollups.NO_DEPLOYMENT
        field = f"e:{cause}{rollups.SEP}{job.model}{rollups.SEP}{deployment}"
        self._counts[(job.tenant, now // 60 * 60, field)] += 1
        if len(self._records) < LOG_PER_FLUSH and self.usage.log_maxlen > 0:
            self._records.append(record_encoder.encode(UsageRecord(
                job.id, now, job.tenant, job.key or "-", job.model, deployment, "refused", 0, 0, 0, 0, False,
                job.lane, error.status, max(0, int((now - job.created) * 1000)), 0, 0, [], redact(error.message),
                cause)))

    async def flush(self) -> None:
        counts, self._counts = self._counts, Counter()
        records, self._records = self._records, []
        if not counts and not records:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for (tenant, minute, field), n in counts.items():
                rollups.count_into(pipe, self.keys, tenant, minute, [(field, n)])
            for record in records:
                pipe.xadd(self.keys.usage_log(), {"r": record}, maxlen=self.usage.log_maxlen, approximate=True)
            await pipe.execute()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except RedisError as exc:  # counts of a second lost: the refusals themselves were answered
                log.warning("could not record refused requests: %s", exc)
