"""`llm-broker status` (one screen: providers, live workers, queues per lane, open circuits, spend
today) and `llm-broker queues` (every stream with work: its length, pending entries, oldest job).

Read straight from Redis, as an operator's view of every API and worker process at once.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from broker.config import Config
from broker.keys import LANES, WORKER_GROUP, Keys
from broker.ops import status_data
from broker.store.connection import connect


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


class StreamRow(msgspec.Struct):
    provider: str
    lane: str
    tenant: str
    length: int
    pending: int
    oldest_age_s: float


async def _status(config: Config) -> dict[str, Any]:
    redis, keys = connect(config.redis_url), Keys(config.namespace)
    try:
        return await status_data.read(redis, keys, config)
    finally:
        await redis.aclose()


async def _queues(config: Config) -> list[StreamRow]:
    redis, keys = connect(config.redis_url), Keys(config.namespace)
    now_ms = time.time() * 1000
    try:
        rows: list[StreamRow] = []
        for provider in config.providers:
            for lane in LANES:
                for raw in await redis.zrange(keys.active(provider, lane), 0, -1):
                    tenant = raw.decode()
                    stream = keys.queue(provider, lane, tenant)
                    pipe = redis.pipeline(transaction=False)
                    pipe.xlen(stream)
                    pipe.xpending(stream, WORKER_GROUP)
                    pipe.xrange(stream, count=1)
                    length, pending, oldest = await pipe.execute(raise_on_error=False)
                    age = (now_ms - int(oldest[0][0].split(b"-")[0])) / 1000 if isinstance(oldest, list) and oldest else 0.0
                    rows.append(StreamRow(provider, lane, tenant, int(length) if isinstance(length, int) else 0,
                                          int(pending.get("pending", 0)) if isinstance(pending, dict) else 0,
                                          round(age, 3)))
        return rows
    finally:
        await redis.aclose()


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def run_status(config: Config, args: argparse.Namespace) -> int:
    status = asyncio.run(_status(config))
    if args.json:
        print(msgspec.json.encode(status).decode())
        return 0
    print(_table([("provider", "kind", "live workers", "service time")]
                 + [(name, p["kind"], str(p["live_workers"]), f"{p['service_ms']:.0f} ms" if p["service_ms"] else "-")
                    for name, p in status["providers"].items()]))
    print()
    busy = [s for s in status["lanes"] if s["waiting"] or s["pending"]]
    if busy:
        print(_table([("provider", "lane", "waiting", "running", "oldest")]
                     + [(s["provider"], s["lane"], str(s["waiting"]), str(s["pending"]), f"{s['oldest_age_s']:.1f}s")
                        for s in busy]))
    else:
        print("queues: empty")
    print()
    print("open circuits: " + (", ".join(status["open_circuits"]) or "none"))
    spend = status["spend_today"]
    print("spend today (UTC): " + (", ".join(f"{t} ${v['cost_usd']:.4f} ({v['requests']} requests)"
                                             for t, v in spend.items()) or "nothing yet"))
    return 0


def run_queues(config: Config, args: argparse.Namespace) -> int:
    rows = asyncio.run(_queues(config))
    if args.json:
        print(msgspec.json.encode(rows).decode())
        return 0
    if not rows:
        print("no queued or running jobs")
        return 0
    print(_table([("provider", "lane", "tenant", "length", "pending", "oldest")]
                 + [(r.provider, r.lane, r.tenant, str(r.length), str(r.pending), f"{r.oldest_age_s:.1f}s")
                    for r in rows]))
    return 0
