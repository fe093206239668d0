"""What an open stream holds in Redis, key by key: the figure bench.compare's memory phase gives as one
number (bench/held.py), taken apart.

    python -m bench.held_keys                     # 1,000 streams of 10 s opened at 500/s, as bench.compare
    python -m bench.held_keys --stream-s 40       # longer streams: none ends before the reading on a busy box

A Redis, API, worker and slow fake upstream of its own (bench/held.py's); streams are held open and read
when the last one opened is half-way, as bench.compare does. Then, per stream:

- `used_memory` before and during, and how much of that change was client buffers (`clients.normal` of
  MEMORY STATS: query and reply buffers, which swing by ~100 KB between readings and are not held data);
- MEMORY USAGE of every key of the namespace, grouped by shape (ids replaced by `<id>`);
- exact figures: with the API and workers stopped, each key group is deleted and the fall of `used_memory`
  read: what its keys cost, with the keyspace's and expires' dict entries (MEMORY USAGE estimates streams).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis

from bench.held import SlowProvider, serving, text_per_event
from bench.loadgen import _Exchange
from bench.openloop import open_streams
from bench.procs import start, stop, wait_ready
from broker.cli.embedded_redis import free_port, start_embedded_redis
from broker.config import hash_key

KEY = "sk-bench-broker"
_IDS = re.compile(rb"[0-9a-f]{32}|[0-9a-f]{12}")


def _memory(r: redis.Redis) -> dict[str, int]:
    raw: Any = r.execute_command("MEMORY", "STATS")
    stats = dict(zip(raw[::2], raw[1::2]))
    return {"used": int(r.info("memory")["used_memory"]), "clients": int(stats[b"clients.normal"])}


def _shapes(r: redis.Redis, ns: str) -> dict[str, tuple[int, int, str]]:
    """Key shape -> (keys, MEMORY USAGE summed, type/encoding)."""
    found: dict[str, list[Any]] = defaultdict(lambda: [0, 0, ""])
    for key in r.scan_iter(match=f"{ns}:*", count=1000):
        shape = found[_IDS.sub(b"<id>", key).decode()]
        shape[0] += 1
        shape[1] += r.memory_usage(key, samples=0) or 0
        shape[2] = f"{r.type(key).decode()}/{r.object('encoding', key).decode()}"  # type: ignore[union-attr]
    return {k: (v[0], v[1], v[2]) for k, v in found.items()}


async def _hold(broker_url: str, model: str, count: int, rate: float, halfway: int,
                ) -> tuple[list[_Exchange], asyncio.Future[Any]]:
    live: list[_Exchange] = []
    streams = asyncio.ensure_future(open_streams(broker_url, KEY, model, count=count, rate=rate, live=live))
    deadline = time.monotonic() + count / rate + 90
    while time.monotonic() < deadline and not (len(live) == count and live[-1].status and (
            live[-1].status != 200 or (live[-1].sse is not None and live[-1].sse.events >= halfway))):
        await asyncio.sleep(0.02)
    return live, streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0, help="streams opened per second")
    parser.add_argument("--stream-s", type=float, default=10.0, help="how long each stream lasts")
    parser.add_argument("--chunks", type=int, default=20)
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-held-keys-"))
    own = start_embedded_redis(prefer_real=True)
    r = redis.Redis.from_url(own.url)
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    up_port, api_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    slow = SlowProvider("hold", "hold-model", free_port(), opts.chunks, opts.stream_s / opts.chunks)
    provider_line, model_line = slow.config_lines()
    config = tmp / "broker.yaml"
    config.write_text(  # bench.compare's config, but for the API's load shedding (a busy box would shed streams)
        f"redis_url: {own.url}\nnamespace: {ns}\nproviders:\n"
        f"  up: {{kind: openai, base_url: '{upstream_url}', api_key: fake, concurrency: 256}}\n{provider_line}"
        f"models:\n  fake-model: [{{provider: up, model: fake-model}}]\n{model_line}server:\n  shed_lag_ms: 0\n"
        f"tenants:\n  bench: {{keys: ['{hash_key(KEY)}'], rpm: 100000000, tpm: 100000000000, "
        "max_concurrent: 100000}\n")
    procs: list[subprocess.Popen[bytes]] = [start([sys.executable, "-m", "tests.fakes.openai_upstream", "--port",
                                                   str(up_port), "--chunks", str(opts.chunks)], tmp / "up.log")]
    try:
        wait_ready(f"{upstream_url}/models", procs[0], 30)
        procs.append(start([sys.executable, "-m", "broker.cli", "worker", "--config", str(config), "--provider", "up",
                            "--log-level", "warning"], tmp / "worker-up.log"))
        procs.append(start([sys.executable, "-m", "broker.cli", "api", "--config", str(config), "--host", "127.0.0.1",
                            "--port", str(api_port), "--log-level", "warning"], tmp / "api.log"))
        broker_url = f"http://127.0.0.1:{api_port}/v1"
        wait_ready(f"{broker_url}/models", procs[-1], 60)
        per_event = text_per_event(upstream_url)
        procs += serving(slow, config, tmp)
        asyncio.run(open_streams(broker_url, KEY, "fake-model", count=10, rate=100))  # first-use paths

        async def measure() -> None:
            before, shapes_before = _memory(r), _shapes(r, ns)
            live, streams = await _hold(broker_url, slow.model, opts.streams, opts.rate, opts.chunks // 2)
            during, shapes_during = _memory(r), _shapes(r, ns)
            held = [e for e in live if e.status == 200 and e.sse is not None and not e.done.done()]
            n = max(len(held), 1)
            text = sum(e.sse.events for e in held if e.sse is not None) * per_event / n
            for proc in procs:  # nothing writes from here on: the deletions below measure what was held
                os.kill(proc.pid, signal.SIGSTOP)
            used = (during["used"] - before["used"]) / n
            clients = (during["clients"] - before["clients"]) / n
            print(f"{len(held)} streams open, {text:.0f} B text each; per stream: used_memory {used:+.0f} B "
                  f"(target {1024 + 1.5 * text:.0f}), of which client buffers {clients:+.0f} B")
            print(f"\n{'MEMORY USAGE by key shape':<58} {'keys':>5} {'B/stream':>9}  type/encoding")
            for shape in sorted(shapes_before.keys() | shapes_during.keys()):
                a, b = shapes_before.get(shape, (0, 0, "")), shapes_during.get(shape, (0, 0, ""))
                if abs(b[1] - a[1]) / n >= 0.5:
                    print(f"{shape[len(ns):]:<58} {b[0]:>5} {(b[1] - a[1]) / n:>9.1f}  {b[2] or a[2]}")
            print(f"\n{'exact: used_memory freed by deleting':<58} {'keys':>5} {'B/stream':>9}")
            exact = 0.0
            for pattern in (f"{ns}:ev:*", f"{ns}:{{hold}}:q:*", f"{ns}:rl:{{bench}}:inflight"):
                keys = list(r.scan_iter(match=pattern, count=1000))
                start_used = _memory(r)["used"]
                for i in range(0, len(keys), 500):
                    r.delete(*keys[i:i + 500])
                freed = (start_used - _memory(r)["used"]) / n
                exact += freed
                print(f"{pattern[len(ns):]:<58} {len(keys):>5} {freed:>9.1f}")
            print(f"{'sum':<58} {'':>5} {exact:>9.1f}")
            for proc in procs:
                os.kill(proc.pid, signal.SIGKILL)
            streams.cancel()

        asyncio.run(measure())
    finally:
        for proc in reversed(procs):
            stop(proc)
        own.stop()


if __name__ == "__main__":
    main()
