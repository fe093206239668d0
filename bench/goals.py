"""Issue 22's goals (the request path near its physical limit), each measured in one bench.compare run
against a direct call to the same fake upstream, with rate limits and the ledger on, and printed as a
table: goal, figure, target, PASS/FAIL, the direct call's figure and LiteLLM's.

    added latency, c=1, non-stream        p50 <= 1.0 ms, p99 <= 3 ms
    added time to first token, c=1         p50 <= 1.5 ms
    open loop at 50% of the c=64 rate      added p99 <= 10 ms
    CPU per plain non-stream request       <= 0.8 ms (API + worker + Redis)
    Redis commands per plain request       <= 12, at c=1 and at c=50
    throughput at c=64, share of direct    >= 35% non-stream, >= 60% stream
    a burst of streams                     every one served or refused (429/503 + Retry-After), 0 resets
    memory per open stream                 Redis <= 1 KB + 1.5 x its text so far; API RSS <= 50 KB

"Added" is the broker's figure minus the direct call's, both from the same run.
"""

from __future__ import annotations

import argparse
import asyncio

import msgspec

from bench.held import HeldMemory
from bench.loadgen import LoadStats, run_load
from bench.openloop import BurstStats, OpenLoopStats, run_open_loop
from bench.probes import Cost, Probe


class Latency(msgspec.Struct, kw_only=True):
    c1: dict[str, dict[str, LoadStats]]  # "direct" / "broker" -> "non-stream" / "stream"
    c50: LoadStats  # the broker's, non-stream
    open_rate_rps: float
    open_loop: dict[str, OpenLoopStats]  # "direct" / "broker", non-stream at open_rate_rps


def measure_latency(direct_url: str, broker_url: str, key: str, opts: argparse.Namespace, probe: Probe,
                    max_rate_rps: float) -> Latency:
    c1: dict[str, dict[str, LoadStats]] = {"direct": {}, "broker": {}}
    for mode, stream, total in (("non-stream", False, opts.c1_requests), ("stream", True, opts.c1_stream_requests)):
        for name, url, k in (("direct", direct_url, "fake"), ("broker", broker_url, key)):
            asyncio.run(run_load(url, k, "fake-model", concurrency=1, total=50, stream=stream))
            before = probe.snap()
            stats = asyncio.run(run_load(url, k, "fake-model", concurrency=1, total=total, stream=stream))
            if name == "broker":
                probe.record(f"c=1 {mode}", before, stats.requests)
            print(f"  {'c=1 ' + name:<30} {mode:<10} {stats.summary()}", flush=True)
            c1[name][mode] = stats
    before = probe.snap()
    c50 = asyncio.run(run_load(broker_url, key, "fake-model", concurrency=50, total=opts.c50_requests, stream=False))
    probe.record("c=50 non-stream", before, c50.requests)
    print(f"  {'c=50 broker':<30} {'non-stream':<10} {c50.summary()}", flush=True)
    rate = max_rate_rps / 2
    open_loop = {}
    for name, url, k in (("direct", direct_url, "fake"), ("broker", broker_url, key)):
        open_loop[name] = asyncio.run(run_open_loop(url, k, "fake-model", rate=rate, duration_s=opts.open_loop_s))
        print(f"  {'open loop ' + name:<30} {'non-stream':<10} {open_loop[name].summary()}", flush=True)
    return Latency(c1=c1, c50=c50, open_rate_rps=rate, open_loop=open_loop)


class Row(msgspec.Struct):
    goal: str
    measured: str
    target: str
    passed: bool | None  # None: not measured in this run
    direct: str = "-"
    litellm: str = "n/a"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} ms"


def rows(lat: Latency | None, direct: dict[str, LoadStats], broker: dict[str, LoadStats],
         litellm: dict[str, LoadStats] | None, litellm_note: str, costs: dict[str, Cost],
         burst: BurstStats | None, held: HeldMemory | None) -> list[Row]:
    out: list[Row] = []
    if lat is not None:
        d, b = lat.c1["direct"]["non-stream"], lat.c1["broker"]["non-stream"]
        p50, p99 = b.latency_p50_ms - d.latency_p50_ms, b.latency_p99_ms - d.latency_p99_ms
        out.append(Row("added latency c=1 non-stream p50", _ms(p50), "<= 1.0 ms", p50 <= 1.0,
                       f"{d.latency_p50_ms:.2f} ms"))
        out.append(Row("added latency c=1 non-stream p99", _ms(p99), "<= 3 ms", p99 <= 3.0,
                       f"{d.latency_p99_ms:.2f} ms"))
        ds, bs = lat.c1["direct"]["stream"], lat.c1["broker"]["stream"]
        ttft = (bs.ttft_p50_ms or 0) - (ds.ttft_p50_ms or 0)
        out.append(Row("added TTFT c=1 stream p50", _ms(ttft), "<= 1.5 ms", ttft <= 1.5, f"{ds.ttft_p50_ms:.2f} ms"))
        od, ob = lat.open_loop["direct"], lat.open_loop["broker"]
        added = ob.latency_p99_ms - od.latency_p99_ms
        clean = ob.errors == ob.dropped == 0
        out.append(Row(f"open loop {lat.open_rate_rps:.0f} req/s added p99", _ms(added)
                       + ("" if clean else f" ({ob.errors} err, {ob.dropped} dropped)"),
                       "<= 10 ms", added <= 10 and clean, f"{od.latency_p99_ms:.2f} ms"))
    for label, goal in (("c=64 non-stream", "CPU/request c=64 (API+worker+Redis)"),
                        ("c=1 non-stream", "CPU/request c=1 (API+worker+Redis)")):
        if (cost := costs.get(label)) is not None:
            cpu = cost.cpu_ms
            out.append(Row(goal, f"{cpu:.3f} ms (API+worker {cost.broker_cpu_ms:.3f}, Redis {cost.redis_cpu_ms:.3f})"
                           if cpu is not None else f"n/a (shared Redis; API+worker {cost.broker_cpu_ms:.3f} ms)",
                           "<= 0.8 ms", None if cpu is None else cpu <= 0.8))
    for label in ("c=1 non-stream", "c=50 non-stream"):
        if (cost := costs.get(label)) is not None:
            n = cost.commands
            out.append(Row(f"Redis commands/request {label.split()[0]}", "n/a (shared Redis)" if n is None
                           else f"{n:.1f}", "<= 12", None if n is None else n <= 12))
    for mode, floor in (("non-stream", 0.35), ("stream", 0.60)):
        b, d = broker[mode], direct[mode]
        share = b.throughput_rps / d.throughput_rps if d.throughput_rps else 0.0
        theirs = (f"{litellm[mode].throughput_rps / d.throughput_rps:.0%} ({litellm[mode].throughput_rps:.0f} req/s)"
                  if litellm else litellm_note)
        out.append(Row(f"throughput c=64 {mode}, share of direct", f"{share:.0%} ({b.throughput_rps:.0f} req/s)",
                       f">= {floor:.0%}", share >= floor, f"{d.throughput_rps:.0f} req/s", theirs))
    if burst is not None:
        out.append(Row(f"burst: {burst.offered} streams served or refused, 0 resets",
                       f"served {burst.served}, refused {burst.refused}, other {burst.other}, resets {burst.resets}, "
                       f"connect timeouts {burst.connect_timeouts}, unanswered {burst.unanswered}",
                       "all, 0 resets", burst.passed))
    if held is not None:
        redis_per = held.redis_bytes_per_stream
        out.append(Row(f"Redis memory per open stream ({held.open_streams} open)",
                       "n/a (shared Redis)" if redis_per is None else
                       f"{redis_per:.0f} B ({held.text_bytes_per_stream:.0f} B text so far)",
                       f"<= {held.redis_target_bytes:.0f} B", None if redis_per is None
                       else redis_per <= held.redis_target_bytes))
        out.append(Row(f"API RSS per open stream ({held.open_streams} open)",
                       f"{held.api_rss_bytes_per_stream / 1024:.1f} KB", "<= 50 KB",
                       held.api_rss_bytes_per_stream <= 50 * 1024))
    return out


def render(table: list[Row]) -> list[str]:
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}
    head = Row("goal", "llm-broker", "target", None, "direct", "LiteLLM")
    cells = [[r.goal, r.measured, r.target, verdict[r.passed] if r is not head else "", r.direct, r.litellm]
             for r in (head, *table)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return ["  " + " | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
