"""Failover under a flaky upstream: a first deployment failing 30% of its calls (429 and 500 mixed)
with a healthy second one, against the healthy deployment alone.

    python -m bench.failover                 # 3000 requests each, c=32
    python -m bench.failover --fail-pct 50 --requests 5000

Reports the success rate (the goal is 100%), the latency failover adds over the
healthy-only case (p50/p99, stream and not), and the upstream calls made per
request (1.0 is the floor; each failover costs one more; so would any retry
storm). The circuit breaker is left at its defaults: K failures in a row open it,
which a 30% failure rate does now and then.
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


def calls(url: str) -> int:
    return int(httpx.get(f"{url}/fake/stats").json()["chat_calls"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000, help="requests per case and mode")
    parser.add_argument("--fail-pct", type=float, default=30.0)
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-failover-"))
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    flaky_port, healthy_port, api_port = free_port(), free_port(), free_port()
    flaky, healthy = f"http://127.0.0.1:{flaky_port}/v1", f"http://127.0.0.1:{healthy_port}/v1"
    config = (
        f"redis_url: {redis_url}\nnamespace: {namespace}\n"
        f"providers:\n  flaky: {{kind: openai, base_url: '{flaky}', concurrency: 128}}\n"
        f"  healthy: {{kind: openai, base_url: '{healthy}', concurrency: 128}}\n"
        "models:\n  alone: [{provider: healthy, model: fake-model}]\n"
        f"  failing: [{{provider: flaky, model: chaos-{opts.fail_pct:g}}}, {{provider: healthy, model: fake-model}}]\n"
        f"tenants:\n  bench: {{keys: ['{hash_key(BROKER_KEY)}']}}\n"
    )
    procs: list[subprocess.Popen[bytes]] = []
    r = redis.Redis.from_url(redis_url)
    results: dict[tuple[str, str], tuple[LoadStats, float, float]] = {}
    try:
        base_url = broker_over_fakes(tmp, config, {"flaky": flaky_port, "healthy": healthy_port}, api_port, procs)
        for model in ("alone", "failing"):
            for mode, stream in (("non-stream", False), ("stream", True)):
                flaky_before, healthy_before = calls(flaky), calls(healthy)
                stats = asyncio.run(run_load(base_url, BROKER_KEY, model, concurrency=opts.concurrency,
                                             total=opts.requests, stream=stream))
                to_flaky, to_healthy = calls(flaky) - flaky_before, calls(healthy) - healthy_before
                per_request = (to_flaky + to_healthy) / max(stats.requests + stats.errors, 1)
                flaky_share = 100 * to_flaky / max(to_flaky + to_healthy, 1)
                results[model, mode] = stats, per_request, flaky_share
                print(f"  {model:<8} {mode:<10} {stats.summary()} upstream_calls/request={per_request:.2f} "
                      f"flaky_share={flaky_share:.0f}%", flush=True)
    finally:
        for proc in procs:
            stop(proc)
        drop_namespace(r, namespace)

    print(f"\nsummary: first deployment failing {opts.fail_pct:g}% of calls (429/500), c={opts.concurrency}")
    for mode in ("non-stream", "stream"):
        (base, _, _), (fail, per_request, flaky_share) = results["alone", mode], results["failing", mode]
        success = 100 * fail.requests / max(fail.requests + fail.errors, 1)
        print(f"  {mode:<10} success {success:.2f}% ({fail.errors} errors); added p50 "
              f"{fail.latency_p50_ms - base.latency_p50_ms:+.1f} ms, p99 {fail.latency_p99_ms - base.latency_p99_ms:+.1f} ms "
              f"over the healthy deployment alone; {per_request:.2f} upstream calls per request, "
              f"{flaky_share:.0f}% of them to the flaky deployment (a 429 cools it down for its Retry-After)")


if __name__ == "__main__":
    main()
