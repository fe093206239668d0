"""The console's time series: per-minute and per-hour counts of every request, kept in Redis.

Written where usage is already recorded, never in a round trip of their own:

- a job a worker ended: by ledger.lua, in the same script call that counts it in the ledger
  (broker/money/ledger.py `entry`), so the series count exactly what the ledger counts;
- an answer from the response cache: in the API's ledger pipeline (`ledger.record_hit`);
- a request refused at the API (rate limit, budget, admission): api/refusals.py, batched once a second.

Those write the minute's bucket only. The hour's is folded from an hour's minutes once it is over
(`fold`, rollup_fold.lua), by the workers' upkeep task (broker/ops/series_upkeep.py): one call an hour
per tenant instead of a second hash in every request's script call, which halves what a request pays.

Nothing is written unless `admin.rollups` is on (the default with an `admin` section): a broker with
no console pays for none of it.

    {ns}:ts:{tenant}:m:{YYYY-MM-DDTHH}  hash: per-minute buckets of one hour (and `folded` once it is);
                                        expires MINUTES_KEPT_S after the hour
    {ns}:ts:{tenant}:h:{YYYY-MM-DD}     hash: per-hour buckets of one day; expires HOURS_KEPT_S after it

Field: "<minute or hour>\\t<metric>\\t<model>\\t<deployment>" → integer. Metrics:

    n              requests, as the ledger counts them (errors and cancelled included)
    x              cancelled (the client left)
    e:<cause>      errors of jobs: upstream_4xx, upstream_5xx, timeout; and requests refused at the API,
                   which the ledger never sees: rate_limit, budget, admission
    ti, to         input and output tokens
    l<i>, t<i>     latency and time to first token, bucket i of a histogram (below)

Latency percentiles over time need more than sums: each bucket keeps a histogram, with fixed
log-spaced bounds so any buckets (minutes into 5 minutes, tenants into a total) merge by adding.
Bucket i holds [2^(i/3), 2^((i+1)/3)) ms, three per doubling, so a percentile read at the bucket's
geometric middle is within 12 % of the truth; bucket 0 takes everything under 1.26 ms and bucket 62
everything from 27 minutes up. So a (model, deployment) adds at most 10 counts and 2 x 63 histogram
fields to a bucket, and in practice 20 to 40: a minute's latencies span a few doublings. Memory
(measured with MEMORY USAGE): about 2.3 KB per (tenant, model, deployment) for each minute it is
used, 3.3 MB a day, and 2.3 MB for 30 days of hours (README, "The operator console").
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

from broker.config import Config
from broker.errors import ErrorInfo
from broker.keys import Keys
from broker.store.scripts import lua_script

_FOLD = lua_script("rollup_fold")
FOLD_AFTER_S = 300  # an hour is folded this long after it ends: a job ended at :59 is written by then
MINUTES_KEPT_S = 86_400  # a minute's bucket is read for 24 h, in the 1 h and 24 h charts
HOURS_KEPT_S = 30 * 86_400  # an hour's for 30 days
PER_OCTAVE = 3
TOP_BUCKET = 62  # from 2^(62/3) ms, 27 minutes: past the default request deadline (10 min)
SEP = "\t"
JOB_CAUSES = ("upstream_4xx", "upstream_5xx", "timeout")
REFUSAL_CAUSES = ("rate_limit", "budget", "admission")
CAUSES = (*JOB_CAUSES, *REFUSAL_CAUSES)
NO_DEPLOYMENT = "-"  # a refusal by the tenant's own limits or budget: no deployment is to blame


def enabled(config: Config) -> bool:
    return config.admin is not None and config.admin.rollups


def bucket(ms: float) -> int:
    """The histogram bucket of a duration in milliseconds."""
    return 0 if ms < 1 else min(TOP_BUCKET, int(PER_OCTAVE * math.log2(ms)))


def bucket_ms(i: int) -> float:
    """The bucket's geometric middle: what a percentile that falls in it reads as."""
    return float(2 ** ((i + 0.5) / PER_OCTAVE))


def cause_of(error: ErrorInfo) -> str:
    """Which of JOB_CAUSES an error a worker ended a job with counts as."""
    if error.status in (408, 504) or "Timeout" in error.kind:
        return "timeout"
    return "upstream_4xx" if error.status < 500 else "upstream_5xx"


def hour_name(at: float) -> str:
    """The UTC hour of `at` as the per-minute hashes are named: YYYY-MM-DDTHH."""
    t = time.gmtime(at)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}"


def places(keys: Keys, tenant: str, now: float) -> list[tuple[str, str, int]]:
    """The hash an event at `now` counts in: (key, its bucket's field prefix, when the key expires). Only
    the minute's: the hour's bucket is folded from them once the hour is over (`fold`)."""
    return [(keys.rollup_minutes(tenant, hour_name(now)), f"{time.gmtime(now).tm_min}{SEP}",
             (int(now) // 3600 + 1) * 3600 + MINUTES_KEPT_S)]


def job_counts(model: str, deployment: str, *, cancelled: bool, error: ErrorInfo | None, input_tokens: int,
               output_tokens: int, latency_ms: int, ttft_ms: int) -> list[tuple[str, int]]:
    """What one ended job adds to its buckets: (field suffix, increment), zeros left out."""
    tail = f"{SEP}{model}{SEP}{deployment}"
    counts = [("n", 1), ("x", int(cancelled)), ("ti", input_tokens), ("to", output_tokens)]
    if error is not None and not cancelled:
        counts.append((f"e:{cause_of(error)}", 1))
    if error is None and latency_ms > 0:  # a failure's latency says how fast it failed, not how the model answers
        counts.append((f"l{bucket(latency_ms)}", 1))
    if ttft_ms > 0:
        counts.append((f"t{bucket(ttft_ms)}", 1))
    return [(metric + tail, n) for metric, n in counts if n]


def script_args(keys: Keys, tenant: str, now: float, counts: list[tuple[str, int]]) -> tuple[list[str], list[Any]]:
    """ledger.lua's rollup KEYS (appended after its others) and ARGV (appended after its 13th)."""
    where = places(keys, tenant, now)
    args: list[Any] = [len(where)]
    for _, prefix, expires in where:
        args += (prefix, expires)
    for field, n in counts:
        args += (field, n)
    return [key for key, _, _ in where], args


def count_into(pipe: Any, keys: Keys, tenant: str, now: float, counts: list[tuple[str, int]]) -> None:
    """The same counts as plain commands queued on a pipeline (the API's: no script to extend there)."""
    for key, prefix, expires in places(keys, tenant, now):
        for field, n in counts:
            pipe.hincrby(key, prefix + field, n)
        pipe.expireat(key, expires)


async def fold(redis: Redis, keys: Keys, tenant: str, hour_start: int) -> bool:
    """Add the hour's per-minute buckets up into its day's per-hour bucket; False if done before (or empty)."""
    t = time.gmtime(hour_start)
    day = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
    done = await redis.register_script(_FOLD)(
        keys=[keys.rollup_minutes(tenant, hour_name(hour_start)), keys.rollup_hours(tenant, day)],
        args=[f"{t.tm_hour}{SEP}", (hour_start // 86_400 + 1) * 86_400 + HOURS_KEPT_S])
    return bool(done)


async def fold_closed(redis: Redis, keys: Keys, tenants: Iterable[str], now: float, *, hours: int = 1) -> None:
    """Fold the last `hours` hours that closed at least FOLD_AFTER_S ago, for every tenant."""
    last = (int(now) - FOLD_AFTER_S) // 3600 * 3600 - 3600
    for tenant in tenants:
        for hour_start in range(last, last - hours * 3600, -3600):
            await fold(redis, keys, tenant, hour_start)
