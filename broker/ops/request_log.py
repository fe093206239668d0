"""The console's request log: the latest requests, newest first, read from the usage log stream.

Nothing new is stored for it: `{ns}:usage:log` (broker/money/ledger.py) already gets one record per
request a worker ended or the cache answered, and the API adds the requests it refused (api/refusals.py).
A filter is applied while reading backwards, page by page, and stops after SCAN_LIMIT records, so a
rare match costs a bounded read. Prompts and answers are never in a record.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis

from broker.keys import Keys
from broker.money.ledger import UsageRecord, record_decoder
from broker.money.pricing import usd

PAGE = 500
SCAN_LIMIT = 20_000
MAX_ROWS = 500


class Filter(msgspec.Struct, kw_only=True):
    tenant: str | None = None
    model: str | None = None
    deployment: str | None = None
    key: str | None = None
    failed: bool = False  # only requests whose client got an error (or that were refused)

    def admits(self, r: UsageRecord) -> bool:
        return ((self.tenant is None or r.tenant == self.tenant) and (self.model is None or r.model == self.model)
                and (self.deployment is None or r.deployment == self.deployment)
                and (self.key is None or r.key == self.key)
                and (not self.failed or r.outcome in ("error", "refused")))


def row(entry_id: bytes, r: UsageRecord) -> dict[str, Any]:
    return {
        "id": entry_id.decode(), "at": r.at, "request_id": f"req_{r.job_id}", "tenant": r.tenant, "key": r.key,
        "model": r.model, "deployment": r.deployment, "lane": r.lane, "outcome": r.outcome,
        "status": r.status or (200 if r.outcome in ("ok", "cache_hit") else None),
        "latency_ms": r.latency_ms or None, "ttft_ms": r.ttft_ms or None,
        "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
        "cost_usd": usd(r.cost_nanos) if r.cost_nanos is not None else None,
        "calls": r.calls, "path": r.path, "error": r.error, "cause": r.cause,
    }


async def recent(redis: Redis, keys: Keys, where: Filter, limit: int = 100) -> list[dict[str, Any]]:
    limit = max(1, min(limit, MAX_ROWS))
    rows: list[dict[str, Any]] = []
    last, scanned = "+", 0
    while len(rows) < limit and scanned < SCAN_LIMIT:
        page: list[Any] = await redis.xrevrange(keys.usage_log(), max=last, min="-", count=PAGE)
        if last != "+":
            page = page[1:]  # the entry the last page ended with
        if not page:
            break
        for entry_id, fields in page:
            scanned += 1
            try:
                record = record_decoder.decode(fields[b"r"])
            except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
                continue
            if where.admits(record):
                rows.append(row(entry_id, record))
                if len(rows) == limit:
                    break
        last = page[-1][0].decode()
    return rows
