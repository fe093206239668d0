"""`llm-broker usage`: the ledger's report (broker/money/ledger.py) as a table, JSON or CSV.

The same figures as GET /v1/usage, read straight from Redis by an operator, for any tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import io
import sys

import msgspec

from broker.config import Config
from broker.keys import Keys
from broker.money import ledger
from broker.store.connection import connect

COLUMNS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "errors", "cancelled",
           "estimated", "unpriced", "cache_hits")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", required=True, help="tenant name from the config")
    p.add_argument("--start", type=dt.date.fromisoformat, help="first UTC day, YYYY-MM-DD (default: 29 days before --end)")
    p.add_argument("--end", type=dt.date.fromisoformat, help="last UTC day, YYYY-MM-DD (default: today)")
    p.add_argument("--group-by", default="day", help="day, model, key, deployment; comma-separated (default: day)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the /v1/usage JSON")
    out.add_argument("--csv", action="store_true", help="print CSV")


def run(config: Config, args: argparse.Namespace) -> int:
    if args.tenant not in config.tenants:
        print(f"llm-broker: unknown tenant {args.tenant!r}; configured: {sorted(config.tenants)}", file=sys.stderr)
        return 2
    group_by = [g.strip() for g in args.group_by.split(",") if g.strip()]
    if not group_by or any(g not in ledger.GROUP_BY for g in group_by):
        print(f"llm-broker: --group-by takes {', '.join(ledger.GROUP_BY)}", file=sys.stderr)
        return 2
    end = args.end or dt.datetime.now(dt.timezone.utc).date()
    start = args.start or end - dt.timedelta(days=29)
    if start > end or (end - start).days >= ledger.MAX_DAYS:
        print(f"llm-broker: --start must be on or before --end, at most {ledger.MAX_DAYS} days apart",
              file=sys.stderr)
        return 2
    report = asyncio.run(_read(config, args.tenant, start, end, group_by))
    columns = [g for g in ledger.GROUP_BY if g in group_by]
    if args.json:
        print(msgspec.json.encode(report.as_json()).decode())
        return 0
    rows = [row.as_json() for row in report.data] + [{**report.total.as_json(), columns[0]: "total"}]
    if args.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[*columns, *COLUMNS], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        print(buffer.getvalue(), end="")
        return 0
    cells = [[*columns, *COLUMNS]] + [[_cell(row.get(c)) for c in [*columns, *COLUMNS]] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    for line in cells:
        print("  ".join(cell.ljust(w) if i < len(columns) else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))))
    return 0


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    return "" if value is None else str(value)


async def _read(config: Config, tenant: str, start: dt.date, end: dt.date, group_by: list[str]) -> ledger.UsageReport:
    redis = connect(config.redis_url)
    try:
        return await ledger.report(redis, Keys(config.namespace), tenant, start, end, group_by)  # type: ignore[arg-type]
    finally:
        await redis.aclose()
