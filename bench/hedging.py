"""Hedged requests against a deployment with a slow tail: 5% of its calls answer 3 s late, and a
healthy second deployment of another provider is there to race them.

    python -m bench.hedging                          # 2000 requests per case and mode, c=32
    python -m bench.hedging --tail-pct 1 --tail-ms 5000 --hedge-ms 150

Cases: the group without hedging, with `hedge_after_ms: <fixed>`, and with `hedge_after_ms: p95`.
Reports p50/p99/p99.9 latency of each, and what hedging cost: the extra upstream calls per
request (each hedge is one), and how many of those the broker abandoned (the losers, whose
upstream calls it closed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import httpx
import redis

from bench.compare import BROKER_KEY
from bench.loadgen import LoadStats, run_load
from bench.procs import drop_namespace, stop
from bench.stack import broker_over_fakes
from broker.cli.embedded_redis import free_port
from broker.config import hash_key


def stats_of(url: str) -> tuple[int, int]:
    found = httpx.get(f"{url}/fake/stats").json()
    return int(found["chat_calls"]), int(found["abandoned"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2000, help="requests per case and mode")
    parser.add_argument("--tail-pct", type=float, default=5.0, help="share of the first deployment's slow calls")
    parser.add_argument("--tail-ms", type=int, default=3000, help="how much slower they are")
    parser.add_argument("--hedge-ms", type=int, default=100, help="the fixed hedge_after_ms case")
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-hedging-"))
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    tail_port, healthy_port, api_port = free_port(), free_port(), free_port()
    tail, healthy = f"http://127.0.0.1:{tail_port}/v1", f"http://127.0.0.1:{healthy_port}/v1"
    slow_model = f"tail-{opts.tail_pct:g}-{opts.tail_ms}"
    deployments = f"[{{provider: tail, model: {slow_model}}}, {{provider: healthy, model: fake-model}}]"
    cases = {"unhedged": "", f"hedge-{opts.hedge_ms}ms": f"hedge_after_ms: {opts.hedge_ms}, ",
             "hedge-p95": "hedge_after_ms: p95, "}
    config = (
        f"redis_url: {redis_url}\nnamespace: {namespace}\n"
        f"providers:\n  tail: {{kind: openai, base_url: '{tail}', concurrency: 128}}\n"
        f"  healthy: {{kind: openai, base_url: '{healthy}', concurrency: 128}}\n"
        "models:\n" + "".join(f"  {name}: {{{how}deployments: {deployments}}}\n" for name, how in cases.items())
        + f"tenants:\n  bench: {{keys: ['{hash_key(BROKER_KEY)}']}}\n"
    )
    procs: list[subprocess.Popen[bytes]] = []
    r = redis.Redis.from_url(redis_url)
    results: dict[tuple[str, str], tuple[LoadStats, float, float]] = {}
    try:
        base_url = broker_over_fakes(tmp, config, {"tail": tail_port, "healthy": healthy_port}, api_port, procs)
        for model in cases:
            for mode, stream in (("non-stream", False), ("stream", True)):
                before = [stats_of(tail), stats_of(healthy)]
                stats = asyncio.run(run_load(base_url, BROKER_KEY, model, concurrency=opts.concurrency,
                                             total=opts.requests, stream=stream))
                after = [stats_of(tail), stats_of(healthy)]
                upstream_calls = sum(a[0] - b[0] for a, b in zip(after, before))
                abandoned = sum(a[1] - b[1] for a, b in zip(after, before))
                done = max(stats.requests + stats.errors, 1)
                results[model, mode] = stats, upstream_calls / done, abandoned / done
                print(f"  {model:<14} {mode:<10} {stats.summary()} p99.9={stats.latency_p999_ms:.1f}ms "
                      f"upstream_calls/request={upstream_calls / done:.3f} abandoned/request={abandoned / done:.3f}",
                      flush=True)
    finally:
        for proc in procs:
            stop(proc)
        drop_namespace(r, namespace)

    print(f"\nsummary: {opts.tail_pct:g}% of the first deployment's calls {opts.tail_ms} ms late, c={opts.concurrency}, "
          f"{opts.requests} requests per case and mode")
    for mode in ("non-stream", "stream"):
        for model in cases:
            stats, per_request, aborted = results[model, mode]
            print(f"  {mode:<10} {model:<14} p50 {stats.latency_p50_ms:7.1f} ms  p99 {stats.latency_p99_ms:7.1f} ms  "
                  f"p99.9 {stats.latency_p999_ms:7.1f} ms  errors {stats.errors}  "
                  f"extra upstream calls {100 * (per_request - 1):+.1f}% ({100 * aborted:.1f}% aborted losers)")


if __name__ == "__main__":
    main()
