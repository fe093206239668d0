"""Overload: offer several times what the upstream can serve and watch the broker keep its promises.

    python -m bench.overload                 # 5x the upstream's capacity for 10 s
    python -m bench.overload --factor 3 --seconds 20

The fake upstream answers every request in ~`--service-ms` (its stream is slow)
and the worker holds `--slots` of them at once, so capacity is about
slots / service time. An open-loop generator offers `factor` x that rate from
two tenants ("steady", "flood": the flood sends 4x more) across the three
lanes, each request with a short deadline (`--deadline-s`). The broker should
admit what it can finish in time, reject the rest at the door (429 queue_full
with Retry-After), keep interactive waits short, share fairly between tenants,
and leave Redis memory where it found it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import redis

from bench.procs import drop_namespace, start, stop, wait_ready
from broker.cli.embedded_redis import free_port
from broker.config import hash_key

TENANTS = {"steady": "sk-bench-steady", "flood": "sk-bench-flood"}
LANES = ("interactive", "default", "batch")


Result = tuple[str, str, int, float, float]  # tenant, lane, status, seconds taken, offset of its start in the run


def served_rate(results: list[Result]) -> tuple[int, float]:
    """Answers, and the seconds from the run's start to the last answer's end.

    Not the offering window: requests admitted near its end finish up to a deadline later, and
    dividing every answer by the window alone reported more than the upstream's capacity.
    """
    ends = [offset + taken for _, _, status, taken, offset in results if status == 200]
    return len(ends), max(ends, default=0.0)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else (values[0] if values else 0.0)


async def offer(base_url: str, rate: float, seconds: float, deadline_s: float) -> list[Result]:
    """Open loop: requests start on schedule whatever happened to earlier ones."""
    results: list[Result] = []
    rng = random.Random(7)

    async def one(http: aiohttp.ClientSession, tenant: str, lane: str) -> None:
        body = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
        headers = {"authorization": f"Bearer {TENANTS[tenant]}", "x-priority": lane,
                   "x-request-timeout": str(deadline_s)}
        began = time.perf_counter()
        try:
            async with http.post(f"{base_url}/chat/completions", json=body, headers=headers) as resp:
                text = await resp.read()
                status = resp.status
            # A stream's status is sent before its end: an error after the 200 is an error event.
            if status == 200 and (b'{"error"' in text or not text.endswith(b"data: [DONE]\n\n")):
                status = 504 if b'"timeout' in text else 502
        except aiohttp.ClientError:
            status = 0
        results.append((tenant, lane, status, time.perf_counter() - began, began - start_at))

    start_at = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(deadline_s + 30)) as http:
        tasks = []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start_at + i / rate - time.perf_counter()))
            tenant = "flood" if rng.random() < 0.8 else "steady"
            lane = rng.choices(LANES, weights=(1, 2, 2))[0]
            tasks.append(asyncio.ensure_future(one(http, tenant, lane)))
        await asyncio.gather(*tasks)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=float, default=5.0, help="offered load / upstream capacity")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--slots", type=int, default=16, help="worker concurrency")
    parser.add_argument("--service-ms", type=float, default=200.0, help="upstream time per request")
    parser.add_argument("--deadline-s", type=float, default=3.0)
    opts = parser.parse_args()

    chunks = 4
    capacity = opts.slots / (opts.service_ms / 1000)
    rate = capacity * opts.factor
    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-overload-"))
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = f"overload-{uuid.uuid4().hex[:8]}"
    upstream_port, api_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    tenants = "".join(f"  {name}: {{keys: ['{hash_key(key)}']}}\n" for name, key in TENANTS.items())
    (tmp / "broker.yaml").write_text(
        f"redis_url: {redis_url}\nnamespace: {namespace}\nqueue: {{min_queue: 16}}\n"
        f"providers:\n  up: {{kind: openai, base_url: '{upstream_url}', concurrency: {opts.slots}}}\n"
        f"models:\n  fake-model: [{{provider: up, model: fake-model}}]\ntenants:\n{tenants}"
    )
    r = redis.Redis.from_url(redis_url)
    memory_before = r.info("memory")["used_memory"]
    print(f"upstream: {opts.service_ms:.0f} ms a request x {opts.slots} slots = {capacity:.0f} req/s; "
          f"offering {rate:.0f} req/s ({opts.factor:g}x) for {opts.seconds:g} s, deadline {opts.deadline_s:g} s")
    procs = [start([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(upstream_port),
                    "--chunks", str(chunks), "--chunk-delay-s", str(opts.service_ms / 1000 / chunks)],
                   tmp / "upstream.log")]
    try:
        wait_ready(f"{upstream_url}/models", procs[0], 30)
        procs.append(start([sys.executable, "-m", "broker.cli", "worker", "--config", str(tmp / "broker.yaml"),
                            "--provider", "up", "--log-level", "warning"], tmp / "worker.log"))
        procs.append(start([sys.executable, "-m", "broker.cli", "api", "--config", str(tmp / "broker.yaml"),
                            "--host", "127.0.0.1", "--port", str(api_port), "--log-level", "warning"],
                           tmp / "api.log"))
        wait_ready(f"http://127.0.0.1:{api_port}/v1/models", procs[-1], 60)
        time.sleep(1.0)  # the worker's first heartbeat
        results = asyncio.run(offer(f"http://127.0.0.1:{api_port}/v1", rate, opts.seconds, opts.deadline_s))
        time.sleep(2.0)
        leftover = sum(1 for _ in r.scan_iter(match=f"{namespace}:*", count=1000))
        memory_after = r.info("memory")["used_memory"]
    finally:
        for proc in procs:
            stop(proc)
        drop_namespace(r, namespace)

    statuses = Counter(status for _, _, status, _, _ in results)  # streams that failed after their 200 count as 5xx
    served = [(t, lane, s) for t, lane, status, s, _ in results if status == 200]
    print(f"\noffered {len(results)}: admitted and answered {statuses[200]}, rejected at the door "
          f"{statuses[429]} (429) / {statuses[503]} (503), timed out {statuses[504]}, other {len(results) - statuses[200] - statuses[429] - statuses[503] - statuses[504]}")
    answered, span_s = served_rate(results)
    print(f"served {answered / span_s if span_s else 0:.0f} req/s of a {capacity:.0f} req/s upstream "
          f"({answered} answers in the {span_s:.1f} s from the first request to the last answer)")
    print("\nlatency of admitted requests (queue wait + ~%.0f ms service):" % opts.service_ms)
    by_lane: dict[str, list[float]] = defaultdict(list)
    by_tenant: dict[str, list[float]] = defaultdict(list)
    for tenant, lane, seconds in served:
        by_lane[lane].append(seconds)
        by_tenant[tenant].append(seconds)
    for lane in LANES:
        offered = sum(1 for _, ln, _, _, _ in results if ln == lane)
        values = by_lane[lane]
        print(f"  lane {lane:<12} served {len(values):>5}/{offered:<5} p50 {statistics.median(values or [0]) * 1000:7.0f} ms"
              f"  p99 {p99(values) * 1000:7.0f} ms")
    for tenant in TENANTS:
        offered = sum(1 for t, _, _, _, _ in results if t == tenant)
        values = by_tenant[tenant]
        print(f"  tenant {tenant:<10} served {len(values):>5}/{offered:<5} p50 {statistics.median(values or [0]) * 1000:7.0f} ms"
              f"  p99 {p99(values) * 1000:7.0f} ms")
    late = Counter(int(offset) for _, _, status, _, offset in results if status == 504)
    if late:
        print("  timed out, by second of the run they were sent in: "
              + ", ".join(f"{second}s: {late[second]}" for second in sorted(late)))
    print(f"\nRedis used_memory {memory_before / 1e6:.2f} MB before, {memory_after / 1e6:.2f} MB after; "
          f"{leftover} keys left in the namespace (per-provider state + results until their TTL)")


if __name__ == "__main__":
    main()
