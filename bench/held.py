"""Streams held open: what a burst of them gets (bench/openloop.py's `open_streams`) and what each
open one costs in memory.

Each phase has a slow fake upstream of its own (`--chunk-delay-s`), and the worker for its provider
runs only during the phase, so neither stays in the other figures (an idle worker still polls Redis).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import redis

from bench.loadgen import _Exchange
from bench.openloop import BurstStats, open_streams
from bench.probes import tree_rss_bytes
from bench.procs import start, stop, wait_ready


class SlowProvider(msgspec.Struct):
    """A provider of the broker's config served by a fake streaming `chunks` chunks `chunk_delay_s` apart."""

    name: str
    model: str
    port: int
    chunks: int
    chunk_delay_s: float

    def config_lines(self) -> tuple[str, str]:
        # concurrency: more slots than streams the phase holds, so none waits for a slot (a queued stream
        # is a different figure from an open one)
        return (f"  {self.name}: {{kind: openai, base_url: 'http://127.0.0.1:{self.port}/v1', api_key: fake, "
                "concurrency: 4096}\n", f"  {self.model}: [{{provider: {self.name}, model: fake-model}}]\n")


def serving(provider: SlowProvider, config: Path, tmp: Path) -> list[subprocess.Popen[bytes]]:
    fake = start([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(provider.port), "--chunks",
                  str(provider.chunks), "--chunk-delay-s", str(provider.chunk_delay_s)], tmp / f"{provider.name}.log")
    procs = [fake]
    try:
        wait_ready(f"http://127.0.0.1:{provider.port}/v1/models", fake, 30)
        procs.append(start([sys.executable, "-m", "broker.cli", "worker", "--config", str(config), "--provider",
                            provider.name, "--log-level", "warning"], tmp / f"worker-{provider.name}.log"))
        time.sleep(1.0)  # the worker's first heartbeat: before it, the API has no live worker to admit to
    except BaseException:
        for proc in procs:
            stop(proc)
        raise
    return procs


def burst(provider: SlowProvider, config: Path, tmp: Path, broker_url: str, key: str, count: int,
          rate: float) -> BurstStats:
    procs = serving(provider, config, tmp)
    try:
        asyncio.run(open_streams(broker_url, key, provider.model, count=20, rate=100))  # first-use paths
        t0 = time.perf_counter()
        outcomes = asyncio.run(open_streams(broker_url, key, provider.model, count=count, rate=rate))
        return BurstStats.of(outcomes, time.perf_counter() - t0)
    finally:
        for proc in procs:
            stop(proc)


class HeldMemory(msgspec.Struct, kw_only=True):
    open_streams: int
    text_bytes_per_stream: float  # streamed so far, on average, when memory was read
    redis_bytes_per_stream: float | None  # None on a shared Redis
    # ...of which the change in the clients' query and reply buffers (MEMORY STATS `clients.normal`): not held
    # for the streams, and swinging by ~100 B a stream from one reading to the next (bench/held_keys.py)
    redis_client_bytes_per_stream: float | None = None
    api_rss_bytes_per_stream: float

    @property
    def redis_target_bytes(self) -> float:
        return 1024 + 1.5 * self.text_bytes_per_stream


def text_per_event(upstream_url: str) -> float:
    """Characters of content per SSE event (as loadgen counts events: every `data:` line but [DONE]), from one
    stream of the fast fake, which answers the same text in as many chunks."""
    body = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    events = text = 0
    with httpx.stream("POST", f"{upstream_url}/chat/completions", json=body, timeout=30) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                events += 1
                for choice in msgspec.json.decode(line[5:]).get("choices", []):
                    text += len((choice.get("delta") or {}).get("content") or "")
    return text / events if events else 0.0


def held_memory(provider: SlowProvider, config: Path, tmp: Path, broker_url: str, key: str, api_pid: int,
                upstream_url: str, r: redis.Redis | None, count: int, rate: float) -> HeldMemory:
    per_event = text_per_event(upstream_url)
    procs = serving(provider, config, tmp)
    try:
        # The API's first-use paths, on the fast upstream: a held stream would take the whole hold to warm up.
        asyncio.run(open_streams(broker_url, key, "fake-model", count=10, rate=100))
        return asyncio.run(hold(broker_url, key, provider.model, api_pid, r, count, rate, provider.chunks // 2,
                                 per_event))
    finally:
        for proc in procs:
            stop(proc)


async def hold(broker_url: str, key: str, model: str, api_pid: int, r: redis.Redis | None, count: int,
                rate: float, halfway: int, per_event: float) -> HeldMemory:
    def used() -> int:
        return int(r.info("memory")["used_memory"]) if r is not None else 0

    def clients() -> int:
        stats: Any = r.execute_command("MEMORY", "STATS") if r is not None else []
        return int(dict(zip(stats[::2], stats[1::2])).get(b"clients.normal", 0))

    clients_before = clients()
    redis_before, rss_before = used(), tree_rss_bytes(api_pid)
    live: list[_Exchange] = []
    streams = asyncio.ensure_future(open_streams(broker_url, key, model, count=count, rate=rate, live=live))
    deadline = time.monotonic() + count / rate + 30
    # Read memory once the last stream opened is half-way through its text (the first ones, opened
    # count/rate earlier, are further on but not finished if a stream outlasts twice that), so the
    # figure holds text as well as the per-stream overhead.
    while time.monotonic() < deadline and not (len(live) == count and live[-1].status and (
            live[-1].status != 200 or (live[-1].sse is not None and live[-1].sse.events >= halfway))):
        await asyncio.sleep(0.02)
    redis_during, rss_during = used(), tree_rss_bytes(api_pid)
    clients_during = clients()
    held = [e for e in live if e.status == 200 and e.sse is not None and not e.done.done()]
    events = sum(e.sse.events for e in held if e.sse is not None)
    await streams
    n = max(len(held), 1)
    return HeldMemory(open_streams=len(held), text_bytes_per_stream=events * per_event / n,
                      redis_bytes_per_stream=(redis_during - redis_before) / n if r is not None else None,
                      redis_client_bytes_per_stream=(clients_during - clients_before) / n if r is not None else None,
                      api_rss_bytes_per_stream=(rss_during - rss_before) / n)
