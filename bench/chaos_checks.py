"""The chaos soak's checks, from what the clients saw (bench/chaos_load.py), the usage log
(`{ns}:usage:log`, one UsageRecord per ended job: broker/money/ledger.py), the batch's output and
error files, and the memory samples. Each check prints its figures; the failing ones say why.

Fails the run: a client left hanging past its deadline; an answer that is neither an answer nor an
honest refusal or explicit error; a dropped connection no API kill explains; an accepted async job
that never ended; a request billed twice; a cost the client saw that the ledger does not say; a
batch line missing or written twice; memory that keeps growing; a process that exited on its own.
Measured, not failed (README declares them): async jobs a failover lost, answers the ledger never
recorded (a worker killed between its two end-of-job round trips, or a failover), answers billed whose
client was cut off by an API kill.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import redis

from bench.chaos_load import Outcome
from broker.keys import Keys
from broker.money.ledger import UsageRecord, record_decoder


@dataclass
class Sample:
    at_s: float
    redis_mb: float
    rss_mb: dict[str, float]


@dataclass
class BatchResult:
    batch_id: str
    lines: int
    status: str = "?"
    counts: dict[str, int] = field(default_factory=dict)
    custom_ids: list[str] = field(default_factory=list)


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def say(self, text: str) -> None:
        self.lines.append(text)

    def fail_if(self, bad: bool, why: str) -> None:
        if bad:
            self.failures.append(why)

    def text(self) -> str:
        verdict = ["", "PASSED" if self.passed else "FAILED:", *(f"  - {f}" for f in self.failures)]
        return "\n".join(self.lines + verdict)


def usage_records(primary: redis.Redis, namespace: str) -> list[UsageRecord]:
    records, cursor = [], "-"
    while True:
        entries = primary.xrange(Keys(namespace).usage_log(), cursor, "+", count=1000)
        for entry_id, fields in entries:
            records.append(record_decoder.decode(fields[b"r"]))
        if len(entries) < 1000:
            return records
        cursor = "(" + entries[-1][0].decode()


def _cut_by_kill(o: Outcome, kills: list[tuple[float, float, float]]) -> bool:
    """Sent before the killed API process was gone, and not over before the kill."""
    return any(o.started <= gone and killed <= o.ended + 0.5 for killed, gone, _ in kills)


def _drop(o: Outcome, kills: list[tuple[float, float, float]]) -> str:
    """What is known of a drop, to look for its cause in the logs: its kind, error, how long the request
    had run, and how far the nearest API kill was from its end."""
    nearest = min((killed - o.ended for killed, _, _ in kills), key=abs, default=None)
    near = "no API kill" if nearest is None else f"nearest API kill {nearest:+.1f} s from its end"
    return f"{o.kind} {o.detail} after {o.ended - o.started:.1f} s, {near}"


def check(outcomes: list[Outcome], api_kills: list[tuple[float, float, float]], primary: redis.Redis, namespace: str,
          batch: BatchResult, samples: list[Sample], died: list[str]) -> Report:
    report = Report()
    report.fail_if(bool(died), "processes exited on their own: " + ", ".join(died))
    # -- clients
    report.say("\nClients")
    by_kind: dict[str, Counter[str]] = {}
    for o in outcomes:
        by_kind.setdefault(o.kind, Counter())[o.result] += 1
    for kind, counts in sorted(by_kind.items()):
        report.say(f"  {kind:<10} {sum(counts.values()):>6}  " + ", ".join(f"{r} {n}" for r, n in counts.most_common()))
    details = Counter(f"{o.result}: {o.detail}" for o in outcomes if o.result not in ("ok",) and o.detail)
    for what, n in details.most_common(12):
        report.say(f"    {n:>5} x {what}")
    hangs = [o for o in outcomes if o.result == "hang"]
    dishonest = [o for o in outcomes if o.result == "dishonest"]
    unexplained = [o for o in outcomes if o.result == "dropped" and not _cut_by_kill(o, api_kills)]
    report.fail_if(bool(hangs), f"{len(hangs)} requests hung past their deadline")
    report.fail_if(bool(dishonest), f"{len(dishonest)} answers were neither an answer nor an honest refusal/error: "
                   + "; ".join(sorted({o.detail for o in dishonest})[:3]))
    report.fail_if(bool(unexplained), f"{len(unexplained)} connections dropped with no API kill to explain it: "
                   + "; ".join(_drop(o, api_kills) for o in unexplained[:3]))
    for o in unexplained[:10]:  # where to look in the API's log (kept across its restarts)
        at = f"{time.strftime('%H:%M:%S', time.gmtime(o.wall))}.{int(o.wall * 1000) % 1000:03d}"
        report.say(f"    unexplained drop: {o.kind} to {o.api} at {at} UTC, {o.ended - o.started:.1f} s in, {o.detail}")

    # -- jobs: every accepted one (a 200 started, a 202 given) ended
    accepted = [o for o in outcomes if o.job_id and o.result in ("ok", "error", "hang", "dishonest", "lost")]
    jobs = [o for o in outcomes if o.kind == "async" and o.job_id]
    report.say("\nJobs")
    report.say(f"  accepted {len(accepted)}: ended {sum(o.result in ('ok', 'error') for o in accepted)}, "
               f"never ended {sum(o.result == 'hang' for o in accepted)}; async jobs {len(jobs)}, of which "
               f"lost by a failover {sum(o.result == 'lost' for o in jobs)}")
    report.fail_if(any(o.result == "hang" for o in jobs), "an accepted async job never ended")

    # -- billing
    records = usage_records(primary, namespace)
    ended = [r for r in records if r.outcome != "cache_hit"]
    per_job = Counter(r.job_id for r in ended if r.outcome != "cancelled")
    twice = [job for job, n in per_job.items() if n > 1]
    ledger = {r.job_id: r for r in ended}
    received = [o for o in outcomes if o.result == "ok" and o.job_id]
    missing = [o for o in received if o.job_id not in ledger]
    mismatched = [o for o in received if o.job_id in ledger and o.cost is not None
                  and abs(o.cost * 1e9 - (ledger[o.job_id].cost_nanos or 0)) > 1]
    known = {o.job_id: o for o in outcomes if o.job_id}
    billed_not_received = [r for r in ended if r.outcome == "ok" and r.lane != "batch"
                           and (r.job_id not in known or known[r.job_id].result != "ok")]
    by_kill = [r for r in billed_not_received if r.job_id not in known or known[r.job_id].result == "dropped"]
    told_error = [r for r in billed_not_received if r not in by_kill]
    report.say("\nBilling")
    report.say(f"  usage log: {len(ended)} ended jobs ({Counter(r.outcome for r in ended)}); "
               f"{sum(r.lane == 'batch' for r in ended)} on the batch lane")
    report.say(f"  answers received {len(received)}: billed {len(received) - len(missing)} "
               f"(cost as the client saw it: {len(received) - len(missing) - len(mismatched)}), never billed "
               f"{len(missing)}")
    report.say(f"  billed twice {len(twice)}; billed but not received {len(billed_not_received)}: "
               f"{len(by_kill)} cut off by an API kill (or never known to a client), {len(told_error)} whose "
               "client was told an error (it may resume the stream: the answer was whole)")
    report.fail_if(bool(twice), f"{len(twice)} jobs billed twice: {twice[:3]}")
    report.fail_if(bool(mismatched), f"{len(mismatched)} answers' usage.cost differs from the ledger's")

    # -- batch: every line once, in the output or the error file
    seen = Counter(batch.custom_ids)
    twice_lines = [cid for cid, n in seen.items() if n > 1]
    absent = batch.lines - len(seen)
    report.say("\nBatch")
    report.say(f"  {batch.batch_id}: {batch.status}, {batch.counts}; {len(batch.custom_ids)} lines in its files, "
               f"{len(seen)} distinct of {batch.lines}, {len(twice_lines)} twice, {absent} missing")
    report.fail_if(batch.status != "completed", f"the batch ended {batch.status}")
    report.fail_if(bool(twice_lines) or absent != 0, f"batch lines: {len(twice_lines)} twice, {absent} missing")

    # -- memory
    report.say("\nMemory (Redis used_memory; RSS summed per role), MB")
    groups = sorted(samples[0].rss_mb) if samples else []
    report.say("  " + f"{'t (s)':>7} {'redis':>7} " + " ".join(f"{g:>8}" for g in groups))
    for s in samples:
        report.say("  " + f"{s.at_s:7.0f} {s.redis_mb:7.1f} " + " ".join(f"{s.rss_mb[g]:8.1f}" for g in groups))
    if len(samples) >= 4:
        half = len(samples) // 2
        early, late = samples[:half], samples[half:]

        def grew(series: list[float], later: list[float], slack: float) -> bool:
            return max(later) > 2 * max(series) + slack

        report.fail_if(grew([s.redis_mb for s in early], [s.redis_mb for s in late], 32),
                       "Redis memory kept growing (second half's peak > 2 x the first's + 32 MB)")
        for g in groups:
            report.fail_if(grew([s.rss_mb[g] for s in early], [s.rss_mb[g] for s in late], 64),
                           f"{g} RSS kept growing (second half's peak > 2 x the first's + 64 MB)")
    return report
