"""The broker's state on one screen, read from Redis: what `llm-broker status` prints and the
status page (api/routes/status.py) shows. Every figure is shared by all processes: queues and
workers (broker/ops/queue_stats.py), open circuits, each provider's recent service time (the moving
average finish.lua keeps), and today's requests, errors and spend per deployment and tenant
from the usage ledger.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from redis.asyncio import Redis

from broker.config import Config
from broker.keys import Keys
from broker.money import ledger
from broker.ops import queue_stats


async def read(redis: Redis, keys: Keys, config: Config) -> dict[str, Any]:
    stats = await queue_stats.read(redis, keys, config)
    pipe = redis.pipeline(transaction=False)
    for name in config.providers:
        pipe.hget(keys.drain(name), "service_ms")
    service = await pipe.execute()
    today = dt.datetime.now(dt.timezone.utc).date()
    spend: dict[str, Any] = {}
    deployments: dict[str, dict[str, float]] = {}
    for tenant in config.tenants:
        report = await ledger.report(redis, keys, tenant, today, today, ["deployment"])
        if report.total.requests:
            spend[tenant] = {"requests": report.total.requests, "cost_usd": report.total.cost_usd,
                             "errors": report.total.errors}
        for row in report.data:
            seen = deployments.setdefault(row.deployment or "", {"requests": 0, "errors": 0})
            seen["requests"] += row.requests
            seen["errors"] += row.errors
    return {
        "providers": {name: {"kind": str(p.__struct_config__.tag), "live_workers": stats.live_workers.get(name, 0),
                             "service_ms": round(float(ms), 1) if ms else None}
                      for (name, p), ms in zip(config.providers.items(), service)},
        "lanes": [msgspec.to_builtins(s) for s in stats.lanes],
        "open_circuits": sorted(d for d, is_open in stats.open_circuits.items() if is_open),
        "deployments_today": {d: {**v, "error_rate": round(v["errors"] / v["requests"], 4) if v["requests"] else 0.0}
                              for d, v in sorted(deployments.items())},
        "spend_today": spend,
    }
