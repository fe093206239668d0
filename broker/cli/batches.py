"""`llm-broker batches`: every batch (or one tenant's) with its status and progress."""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec

from broker.batches import records as batches
from broker.config import Config
from broker.keys import Keys
from broker.store.connection import connect

BAR = 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", help="only this tenant's batches")
    p.add_argument("--limit", type=int, default=50, help="newest first, at most this many per tenant (default: 50)")
    p.add_argument("--json", action="store_true", help="the batch objects as JSON lines")


def progress(batch: batches.Batch, bar: bool) -> str:
    counts = batch.request_counts
    done = counts.completed + counts.failed
    text = f"{done}/{counts.total}" + (f" ({counts.failed} failed)" if counts.failed else "")
    if not bar or not counts.total:
        return text
    filled = BAR * done // counts.total
    return "[" + "#" * filled + "." * (BAR - filled) + "] " + text


async def _collect(config: Config, tenants: list[str], limit: int) -> list[tuple[str, batches.Batch]]:
    redis = connect(config.redis_url)
    keys = Keys(config.namespace)
    try:
        found = []
        for tenant in tenants:
            page = await batches.page(redis, keys, tenant, after=None, limit=limit)
            found += [(tenant, b) for b in page.data]
        return found
    finally:
        await redis.aclose()


def run(config: Config, args: argparse.Namespace) -> int:
    if args.tenant is not None and args.tenant not in config.tenants:
        print(f"llm-broker: unknown tenant {args.tenant!r}; configured: {sorted(config.tenants)}", file=sys.stderr)
        return 2
    tenants = [args.tenant] if args.tenant else sorted(config.tenants)
    found = asyncio.run(_collect(config, tenants, args.limit))
    if args.json:
        for _, batch in found:
            print(msgspec.json.encode(batch).decode())
        return 0
    if not found:
        print("no batches")
        return 0
    bar = sys.stdout.isatty()
    rows = [("tenant", "batch", "status", "endpoint", "progress")]
    rows += [(t, b.id, b.status, b.endpoint, progress(b, bar)) for t, b in found]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])
    return 0
