"""The console's charts read from the rollups (broker/ops/rollups.py): one window, one filter.

A window is a run of equal steps ending now: the last hour by minute, the last 24 hours by 5 minutes
(from the per-minute buckets), the last 30 days by hour (and the last two hours' minutes, not folded into
hours yet). Every tenant in scope has its buckets read in one pipelined round trip, a hash per hour (or
per day) each: 2, 25 or 33 keys a tenant. Histograms of
the buckets a point covers are added, then read for p50 and p99; rates are per second of the step.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, NamedTuple

from redis.asyncio import Redis

from broker.keys import Keys
from broker.ops import rollups


class Window(NamedTuple):
    name: str
    step_s: int
    points: int
    bucket_s: int  # the rollup it reads: 60 (per minute, a hash per hour) or 3600 (per hour, a hash per day)

    def span(self, now: float) -> tuple[int, int]:
        """Its first point's start and its end (the current step included), unix s."""
        end = (int(now) // self.step_s + 1) * self.step_s
        return end - self.points * self.step_s, end

    def hashes(self, now: float) -> Iterator[tuple[int, str]]:
        """The start and the name (an hour or a day, UTC) of every rollup hash it covers."""
        size = self.bucket_s * (60 if self.bucket_s == 60 else 24)
        start, end = self.span(now)
        for at in range(start // size * size, end, size):
            yield at, time.strftime("%Y-%m-%dT%H" if self.bucket_s == 60 else "%Y-%m-%d", time.gmtime(at))


WINDOWS = {w.name: w for w in (Window("1h", 60, 60, 60), Window("24h", 300, 288, 60), Window("30d", 3600, 720, 3600))}
QUANTILES = (("p50", 0.5), ("p99", 0.99))


class _Point:
    __slots__ = ("counts", "latency", "ttft")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.latency: Counter[int] = Counter()
        self.ttft: Counter[int] = Counter()


def quantile(histogram: Counter[int], q: float) -> float | None:
    """The q-quantile of a histogram of bucket → count, as its bucket's middle (None: empty)."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for i in sorted(histogram):
        seen += histogram[i]
        if seen >= rank:
            return round(rollups.bucket_ms(i), 1)
    return None  # unreachable: seen reaches total


async def read(redis: Redis, keys: Keys, tenants: list[str], window: Window, *, model: str | None = None,
               deployment: str | None = None, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    start, end = window.span(now)
    sources: list[tuple[int, int, str]] = []  # (the hash's start, its buckets' size, its key)
    for tenant in tenants:
        sources += [(at, window.bucket_s, keys.rollup_minutes(tenant, name) if window.bucket_s == 60
                     else keys.rollup_hours(tenant, name)) for at, name in window.hashes(now)]
        if window.bucket_s == 3600:  # the hours not folded yet (rollups.fold): read from their minutes
            sources += [(at, 60, keys.rollup_minutes(tenant, rollups.hour_name(at)))
                        for at in range((int(now) // 3600 - 1) * 3600, int(now) + 1, 3600)]
    async with redis.pipeline(transaction=False) as pipe:
        for _, _, key in sources:
            pipe.hgetall(key)
        found: list[dict[bytes, bytes]] = await pipe.execute()
    points = [_Point() for _ in range(window.points)]
    for (base, size, _), fields in zip(sources, found):
        if size != window.bucket_s and b"folded" in fields:
            continue  # already counted in its day's hash
        for field, value in fields.items():
            parts = field.decode().split(rollups.SEP)
            if len(parts) != 4:
                continue  # `folded`: an hour's mark (rollups.fold)
            bucket, metric, of_model, of_deployment = parts
            if (model and of_model != model) or (deployment and of_deployment != deployment):
                continue
            at = base + int(bucket) * size
            if not start <= at < end:
                continue
            point = points[(at - start) // window.step_s]
            if metric[0] == "l":
                point.latency[int(metric[1:])] += int(value)
            elif metric[0] == "t" and metric[1:].isdigit():
                point.ttft[int(metric[1:])] += int(value)
            else:
                point.counts[metric] += int(value)
    return _shape(window, start, points)


def _shape(window: Window, start: int, points: list[_Point]) -> dict[str, Any]:
    step = window.step_s
    refused = [sum(p.counts[f"e:{c}"] for c in rollups.REFUSAL_CAUSES) for p in points]
    asked = [p.counts["n"] + r for p, r in zip(points, refused)]
    failed = [sum(p.counts[f"e:{c}"] for c in rollups.CAUSES) for p in points]
    total: Counter[str] = Counter()
    for p in points:
        total.update(p.counts)
    return {
        "window": window.name, "step_s": step, "t": [start + i * step for i in range(window.points)],
        "requests_per_s": [round(a / step, 4) for a in asked],
        "tokens_per_s": {"input": [round(p.counts["ti"] / step, 3) for p in points],
                         "output": [round(p.counts["to"] / step, 3) for p in points]},
        "error_rate": [round(f / a, 4) if a else None for f, a in zip(failed, asked)],
        "errors_per_s": {c: [round(p.counts[f"e:{c}"] / step, 4) for p in points] for c in rollups.CAUSES},
        "latency_ms": {name: [quantile(p.latency, q) for p in points] for name, q in QUANTILES},
        "ttft_ms": {name: [quantile(p.ttft, q) for p in points] for name, q in QUANTILES},
        "totals": {"requests": total["n"], "cancelled": total["x"], "input_tokens": total["ti"],
                   "output_tokens": total["to"], **{c: total[f"e:{c}"] for c in rollups.CAUSES}},
    }
