"""The console's queue charts: each provider's depth and oldest job per lane, over time.

No request passes a place that sees a queue whole, so the workers sample it (broker/ops/series_upkeep.py):
each worker process, every `admin.queue_sample_s` (10 s), reads its own provider's lanes (broker/ops/queue_stats.py, two pipelined round trips)
and keeps the largest value of each minute and each hour (queue_sample.lua). A provider with N
workers is sampled N times as often; with none, its queues are not charted (and /status says so).

    {ns}:{p}:ts:q:m:{YYYY-MM-DDTHH}  field "<minute>\\t<lane>\\td|w": depth (jobs waiting), oldest (ms);
                                     expires 24 h after its hour
    {ns}:{p}:ts:q:h:{YYYY-MM-DD}     the same per hour; expires 30 days after its day
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from broker.config import Config
from broker.keys import LANES, Keys
from broker.ops import queue_stats, rollups
from broker.ops.series import Window
from broker.store.scripts import lua_script

_SAMPLE = lua_script("queue_sample")


async def sample(redis: Redis, keys: Keys, config: Config, provider: str, now: float) -> None:
    stats = await queue_stats.read(redis, keys, config, [provider])
    t = time.gmtime(now)
    hour, day = time.strftime("%Y-%m-%dT%H", t), time.strftime("%Y-%m-%d", t)
    values: list[Any] = []
    for lane in stats.lanes:
        values += [f"{lane.lane}{rollups.SEP}d", lane.waiting, f"{lane.lane}{rollups.SEP}w",
                   int(lane.oldest_age_s * 1000)]
    await redis.register_script(_SAMPLE)(
        keys=[keys.queue_minutes(provider, hour), keys.queue_hours(provider, day)],
        args=[(int(now) // 3600 + 1) * 3600 + rollups.MINUTES_KEPT_S,
              (int(now) // 86_400 + 1) * 86_400 + rollups.HOURS_KEPT_S,
              f"{t.tm_min}{rollups.SEP}", f"{t.tm_hour}{rollups.SEP}", *values])


async def read(redis: Redis, keys: Keys, providers: list[str], window: Window,
               now: float | None = None) -> dict[str, dict[str, list[float | None]]]:
    """Per "<provider>/<lane>": `depth` and `oldest_s`, the largest sampled in each of the window's points
    (None where no worker sampled)."""
    now = time.time() if now is None else now
    start, end = window.span(now)
    hashes = list(window.hashes(now))
    async with redis.pipeline(transaction=False) as pipe:
        for p in providers:
            for _, name in hashes:
                pipe.hgetall(keys.queue_minutes(p, name) if window.bucket_s == 60 else keys.queue_hours(p, name))
        found: list[dict[bytes, bytes]] = await pipe.execute()
    out: dict[str, dict[str, list[float | None]]] = {
        f"{p}/{lane}": {"depth": [None] * window.points, "oldest_s": [None] * window.points}
        for p in providers for lane in LANES}
    for i, fields in enumerate(found):
        provider, base = providers[i // len(hashes)], hashes[i % len(hashes)][0]
        for field, value in fields.items():
            bucket, lane, what = field.decode().split(rollups.SEP)
            at = base + int(bucket) * window.bucket_s
            if not start <= at < end or f"{provider}/{lane}" not in out:
                continue
            series = out[f"{provider}/{lane}"]["depth" if what == "d" else "oldest_s"]
            x = (at - start) // window.step_s
            v = int(value) if what == "d" else int(value) / 1000
            series[x] = v if series[x] is None else max(v, series[x] or 0)
    return out
