"""The usage ledger: what every job used and cost, per tenant, key, model, deployment and UTC day.

Written by the worker when a job ends, by ledger.lua right after finish.lua, and only for the
delivery whose XACK acknowledged the job's entry: a job re-delivered after its worker died, or an
end sent twice while Redis was flaky, is counted once. (Two scripts, since the queue is in the
provider's Cluster slot and the ledger in the tenant's; a worker killed between the two round trips
leaves that one job uncounted, never counted twice.) A job handed to another deployment (failover) or a
hedge's loser is not counted there: the attempt that answers is.

    {ns}:usage:{{tenant}}:{day} hash, field "<key>\\t<model>\\t<deployment>\\t#" → 1: the group's counters below;
                                field "<key>\\t<model>\\t<deployment>\\t<metric>" → integer (cache hits, and every
                                metric as the previous release counted it)
    {ns}:usage:{{tenant}}:{day}:<key>\\t<model>\\t<deployment>
                                string of nine signed 64-bit big-endian counters, METRICS order (ledger.lua's
                                BITFIELD: one command per job)
    {ns}:usage:log              stream of UsageRecord (msgpack), for export and the console's request log
                                (refusals at the API too: api/refusals.py); trimmed to usage.log_maxlen

Costs are integer nano-dollars (broker/money/pricing.py), so sums are exact.
"""

from __future__ import annotations

import datetime as dt
import struct
import time
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from broker.config import UsageSettings
from broker.errors import ErrorInfo
from broker.keys import Keys
from broker.money.pricing import Charge, usd
from broker.ops import rollups as rollups_
from broker.ops.redaction import redact
from broker.queue.jobs import Job
from broker.store.scripts import Queued, evalsha_into

Outcome = Literal["ok", "error", "cancelled"]
GroupBy = Literal["day", "model", "key", "deployment"]
GROUP_BY: tuple[GroupBy, ...] = ("day", "model", "key", "deployment")
METRICS = ("requests", "input_tokens", "output_tokens", "cached_tokens", "cost_nanos", "errors", "cancelled",
           "estimated", "unpriced")
# Not one of METRICS (ledger.lua's ARGV order): the API counts the answers the response cache gave,
# as requests of the pseudo-deployment `cache` (no real one is named without a `/`).
CACHE_HITS = "cache_hits"
CACHE_DEPLOYMENT = "cache"
REPORTED = (*METRICS, CACHE_HITS)
COUNTERS = "#"  # the metric part of a field that lists a group's counters: no metric, so a previous release's
# reader skips it
COUNTERS_LAYOUT = struct.Struct(">9q")  # ledger.lua's BITFIELD i64 #0..#8
SEP = "\t"  # in no key, model or provider name (config validates names; model ids hold no tabs)
MAX_DAYS = 366  # one report's range


class UsageRecord(msgspec.Struct, array_like=True):
    """One ended job, as the export stream carries it."""

    job_id: str
    at: float  # unix seconds
    tenant: str
    key: str
    model: str
    deployment: str
    outcome: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_nanos: int | None
    estimated: bool
    # For the console's request log (broker/ops/request_log.py); appended, so older records still decode.
    lane: str = ""
    status: int = 0  # the HTTP status its client got (0: a record older than this field)
    latency_ms: int = 0  # from the API's accepting it to its end
    ttft_ms: int = 0  # from the API's accepting it to its first token (0: none)
    calls: int = 0  # upstream calls made for it, failovers and hedges included
    path: list[str] = []  # the deployments that failed it before the one that ended it, "<deployment> <status>"
    error: str = ""  # its error's message, redacted of upstream secrets; never a prompt or an answer
    cause: str = ""  # the error's kind for the console's charts (broker/ops/rollups.py CAUSES)


record_encoder = msgspec.msgpack.Encoder()
record_decoder = msgspec.msgpack.Decoder(UsageRecord)


def utc_day(at: float) -> str:
    # Every job's entry asks (a strftime each was ~0.5% of a worker's samples): one answer per UTC day.
    global _day
    start, name = _day
    if not start <= at < start + 86_400:
        start = at - at % 86_400
        _day = (start, name := time.strftime("%Y-%m-%d", time.gmtime(at)))
    return name


_day: tuple[float, str] = (0.0, "1970-01-01")


class Entry(NamedTuple):
    """What one ended job adds to the ledger: ledger.lua's KEYS and ARGV, and its usage-log record."""

    keys: list[str]
    args: list[Any]
    record: bytes


def entry(keys: Keys, job: Job, charge: Charge, outcome: Outcome, now: float, settings: UsageSettings, *,
          error: ErrorInfo | None = None, ttft_ms: int = 0, rollups: bool = False) -> Entry:
    """`error`: what the job ended with; `ttft_ms`: its first token, counted from the API's accepting it
    (0: none); `rollups`: count it in the console's series too (broker/ops/rollups.py), in the same call."""
    day = utc_day(now)
    day_ends = (int(now) // 86_400 + 1) * 86_400  # unix time has no leap seconds: a UTC day is 86,400 s
    key = job.key or "-"
    latency_ms = max(0, int((now - job.created) * 1000))  # `created` is the API's clock: never below zero
    cancelled = outcome == "cancelled"
    record = UsageRecord(job.id, now, job.tenant, key, job.model, job.served_by, outcome, charge.input_tokens,
                         charge.output_tokens, charge.cached_tokens, charge.cost_nanos, charge.estimated,
                         job.lane, error.status if error else 200, latency_ms, ttft_ms, job.calls,
                         [f"{f.provider}/{f.model} {f.status}" for f in job.failures],
                         redact(error.message) if error else "",
                         "" if error is None else "cancelled" if cancelled else rollups_.cause_of(error))
    prefix = SEP.join((key, job.model, job.served_by, ""))
    counts = {
        "requests": 1, "input_tokens": charge.input_tokens, "output_tokens": charge.output_tokens,
        "cached_tokens": charge.cached_tokens, "cost_nanos": charge.cost_nanos or 0,
        "errors": int(outcome == "error"), "cancelled": int(outcome == "cancelled"),
        "estimated": int(charge.estimated), "unpriced": int(charge.cost_nanos is None),
    }
    # The budgets' holds, replaced by what the job cost (broker/money/budgets.py).
    held = [k for counter in job.budget_counters for k in (counter, keys.budget_holds(counter))]
    args = [prefix, day_ends + settings.retention_days * 86_400, *(counts[m] for m in METRICS),
            charge.cost_nanos or 0, f"{job.id}:{job.budget_reserved}"]
    if rollups:
        series = rollups_.job_counts(job.model, job.served_by, cancelled=cancelled, error=error,
                                     input_tokens=charge.input_tokens, output_tokens=charge.output_tokens,
                                     latency_ms=latency_ms, ttft_ms=ttft_ms)
        more_keys, more_args = rollups_.script_args(keys, job.tenant, now, series)
        held += more_keys
        args += more_args
    return Entry([keys.usage(job.tenant, day), keys.usage_counts(job.tenant, day, prefix[:-1]), *held], args,
                 record_encoder.encode(record))


def write_into(pipe: Pipeline, script: AsyncScript, keys: Keys, settings: UsageSettings,
               entries: list[Entry]) -> list[Queued]:
    """Queue ledger.lua for each entry, and its record on the usage log (another Cluster slot)."""
    queued = [evalsha_into(pipe, script, e.keys, e.args) for e in entries]
    if settings.log_maxlen > 0:
        for e in entries:
            pipe.xadd(keys.usage_log(), {"r": e.record}, maxlen=settings.log_maxlen, approximate=True)
    return queued


async def record_hit(redis: Redis, keys: Keys, settings: UsageSettings, job: Job, now: float, *,
                     rollups: bool = False) -> None:
    """An answer from the response cache (broker/cache/exact.py): a request with no upstream tokens and no
    cost, and one cache hit. Not in ledger.lua: no worker saw it, and there is no entry to acknowledge."""
    key = job.key or "-"
    usage = keys.usage(job.tenant, utc_day(now))
    prefix = SEP.join((key, job.model, CACHE_DEPLOYMENT, ""))
    record = UsageRecord(job.id, now, job.tenant, key, job.model, CACHE_DEPLOYMENT, "cache_hit", 0, 0, 0, 0, False,
                         job.lane, 200, max(0, int((now - job.created) * 1000)))
    async with redis.pipeline(transaction=False) as pipe:  # the log is in another Cluster slot
        pipe.hincrby(usage, prefix + "requests", 1)
        pipe.hincrby(usage, prefix + CACHE_HITS, 1)
        pipe.expireat(usage, (int(now) // 86_400 + 1) * 86_400 + settings.retention_days * 86_400)
        if rollups:  # a request the ledger counts, in the same round trip (no latency: no model answered it)
            rollups_.count_into(pipe, keys, job.tenant, now, [(f"n{SEP}{job.model}{SEP}{CACHE_DEPLOYMENT}", 1)])
        if settings.log_maxlen > 0:
            pipe.xadd(keys.usage_log(), {"r": record_encoder.encode(record)}, maxlen=settings.log_maxlen,
                      approximate=True)
        await pipe.execute()


class UsageRow(msgspec.Struct, kw_only=True):
    """One row of a usage report: the group_by fields it is for (the rest unset), and its sums."""

    day: str | None = None
    model: str | None = None
    key: str | None = None
    deployment: str | None = None
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cost_nanos: int = 0
    errors: int = 0
    cancelled: int = 0
    estimated: int = 0
    unpriced: int = 0
    cache_hits: int = 0

    def add(self, metric: str, value: int) -> None:
        setattr(self, metric, getattr(self, metric) + value)
        if metric == "cost_nanos":
            self.cost_usd = usd(self.cost_nanos)


    def as_json(self) -> dict[str, Any]:
        """Its group_by fields (the others left out) and every sum."""
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}


class UsageReport(msgspec.Struct):
    data: list[UsageRow]
    total: UsageRow

    def as_json(self) -> dict[str, Any]:
        return {"object": "list", "data": [row.as_json() for row in self.data], "total": self.total.as_json()}


def days(start: dt.date, end: dt.date) -> list[str]:
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


async def report(redis: Redis, keys: Keys, tenant: str, start: dt.date, end: dt.date,
                 group_by: Iterable[GroupBy]) -> UsageReport:
    """The tenant's usage from `start` to `end` (UTC days, inclusive), summed per `group_by`."""
    wanted = [g for g in GROUP_BY if g in set(group_by)]
    span = days(start, end)
    async with redis.pipeline(transaction=False) as pipe:
        for day in span:
            pipe.hgetall(keys.usage(tenant, day))
        found: list[dict[bytes, bytes]] = await pipe.execute()
    # (day, group, metric, value) of every count; a group's counters (its "#" field) read in one more round trip.
    counts: list[tuple[str, str, str, int]] = []
    groups: list[tuple[str, str]] = []
    for day, fields in zip(span, found):
        for field, value in fields.items():
            group, _, metric = field.decode().rpartition(SEP)
            if metric == COUNTERS:
                groups.append((day, group))
            elif metric in REPORTED:
                counts.append((day, group, metric, int(value)))
    if groups:
        async with redis.pipeline(transaction=False) as pipe:  # every key in the tenant's Cluster slot
            for day, group in groups:
                pipe.get(keys.usage_counts(tenant, day, group))
            packed: list[bytes | None] = await pipe.execute()
        for (day, group), raw in zip(groups, packed):
            sums = COUNTERS_LAYOUT.unpack((raw or b"").ljust(COUNTERS_LAYOUT.size, b"\0"))
            counts += [(day, group, metric, n) for metric, n in zip(METRICS, sums) if n]
    rows: dict[tuple[str, ...], UsageRow] = {}
    total = UsageRow()
    for day, group, metric, count in counts:
        key, model, deployment = group.split(SEP)
        where = {"day": day, "model": model, "key": key, "deployment": deployment}
        row_key = tuple(where[g] for g in wanted)
        row = rows.get(row_key)
        if row is None:
            row = rows[row_key] = UsageRow()
            for g in wanted:
                setattr(row, g, where[g])
        row.add(metric, count)
        total.add(metric, count)
    return UsageReport([rows[g] for g in sorted(rows)], total)
