"""Capacity model inputs and their check (docs/capacity.md).

    python -m bench.capacity measure    # per-request figures -> bench/capacity_inputs.json (~2 minutes)
    python -m bench.capacity validate   # the model against this box: 1 vs 2 workers, 1- vs 3-master Cluster
    python -m bench.capacity plan --rps 10000 --stream-share 0.5 --tokens 300 --latency-s 5

`measure` starts what bench.compare starts (a redis-server of its own, the fake OpenAI upstream, one
API and one worker process, each in real processes) and reads, through bench/probes.py, the CPU per
request of the API, the worker and Redis separately, for non-stream requests and for streams of two
chunk counts (CPU per stream is a line in its chunks); Redis commands per request (INFO commandstats)
at c=1 and at the loaded concurrency; which hash tag each command's slot follows (MONITOR, then Redis's
own COMMAND GETKEYS for each command's keys); memory per open stream (bench/held.py's phase) in Redis,
the API and the worker, and what streams whose chunks come paced cost (two chunk counts); memory per
job waiting in the queue (a provider whose one worker holds one call at a time, so every other
request waits in its stream); what a finished request keeps in Redis until its TTL; and the CPU a
Redis Cluster node spends on a PUBLISH another node broadcasts to it (bench/cluster.py).

`validate` (bench/capacity_validate.py) runs the model against the box it runs on; `plan` sizes a load
from the inputs file (bench/capacity_model.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import redis

from bench.capacity_model import KEYLESS, PROVIDER, SPREAD, TENANT, Inputs, Load, Plan, RoleCost, plan
from bench.cluster import Cluster, cmd
from bench.compare import BROKER_KEY
from bench.held import SlowProvider, hold, serving, text_per_event
from bench.loadgen import LoadStats, run_load
from bench.openloop import open_streams
from bench.probes import Probe, tree_cpu_s, tree_rss_bytes
from bench.procs import REPO, start, stop, wait_ready
from bench.timeline import monitor
from broker.cli.embedded_redis import free_port, start_embedded_redis
from broker.config import hash_key

INPUTS = REPO / "bench" / "capacity_inputs.json"
TENANT_NAME = "bench"
PROVIDER_NAME = "up"
CONCURRENCY = 64


def _config_defaults() -> tuple[int, int, int, int]:
    """From the config itself: an HTTP provider's `concurrency` (calls in flight per worker process),
    `server.max_in_flight` (requests one API process holds before its door refuses), and how long a
    result and a stream's event log are kept (`server.result_ttl_s`, `server.stream_resume_ttl_s`)."""
    from broker.config.model import ServerSettings
    from broker.config.providers import OpenAIProvider
    provider = msgspec.convert({"kind": "openai", "base_url": "http://x"}, OpenAIProvider)
    server = ServerSettings()
    return provider.concurrency, server.max_in_flight, server.result_ttl_s, server.stream_resume_ttl_s


class Stack:
    """Fake upstreams, one API process and workers over one Redis URL; every process stopped on exit.
    `chunks`: the providers with a fast fake of their own (chunks per stream); `slow`: providers whose
    slow fake and worker a phase starts itself (bench/held.py's `serving`), with their `concurrency`."""

    def __init__(self, tmp: Path, redis_url: str, chunks: dict[str, int], slow: dict[str, int] | None = None) -> None:
        self.tmp, self.redis_url = tmp, redis_url
        self.namespace = f"cap-{uuid.uuid4().hex[:8]}"
        slots = {n: 256 for n in chunks} | (slow or {})
        self.ports = {name: free_port() for name in slots}
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}/v1"
        self.workers: dict[str, list[subprocess.Popen[bytes]]] = {}
        providers = "".join(f"  {n}: {{kind: openai, base_url: 'http://127.0.0.1:{self.ports[n]}/v1', api_key: fake, "
                            f"concurrency: {c}}}\n" for n, c in slots.items())
        models = "".join(f"  m-{n}: [{{provider: {n}, model: fake-model}}]\n" for n in slots)
        self.config = tmp / f"broker-{self.namespace}.yaml"
        self.config.write_text(
            f"redis_url: '{redis_url}'\nnamespace: {self.namespace}\nproviders:\n{providers}models:\n{models}"
            f"tenants:\n  {TENANT_NAME}: {{keys: ['{hash_key(BROKER_KEY)}'], rpm: 100000000, tpm: 100000000000, "
            "max_concurrent: 100000}\n"
            # A long queue is what one phase measures: never refused. The door's shedding on event-loop lag
            # off: what a request costs is measured here, not when an overloaded process refuses it (on a
            # box shared with other work the lag crosses 100 ms while nothing is wrong).
            "queue: {min_queue: 1000000}\nserver: {shed_lag_ms: 0}\n")
        self.fakes = {n: start([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(self.ports[n]),
                                "--chunks", str(c)], tmp / f"upstream-{n}-{self.namespace}.log")
                      for n, c in chunks.items()}
        for n, proc in self.fakes.items():
            wait_ready(f"http://127.0.0.1:{self.ports[n]}/v1/models", proc, 30)
        self.api = start([sys.executable, "-m", "broker.cli", "api", "--config", str(self.config), "--host",
                          "127.0.0.1", "--port", str(self.api_port), "--log-level", "warning"],
                         tmp / f"api-{self.namespace}.log")
        wait_ready(f"{self.url}/models", self.api, 60, {"authorization": f"Bearer {BROKER_KEY}"})

    def set_workers(self, provider: str, count: int) -> list[subprocess.Popen[bytes]]:
        for proc in self.workers.pop(provider, []):
            stop(proc)
        self.workers[provider] = [
            start([sys.executable, "-m", "broker.cli", "worker", "--config", str(self.config), "--provider", provider,
                   "--log-level", "warning"], self.tmp / f"worker-{provider}-{i}-{self.namespace}.log")
            for i in range(count)]
        if count:  # until their first heartbeat the API has no live worker to admit to: 503
            self._until_served(f"m-{provider}")
        return self.workers[provider]

    def _until_served(self, model: str, timeout_s: float = 60.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if not closed_loop(self.url, model, 1, False, 1, quiet=True).errors:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{model}: no answer after {timeout_s} s")

    def stop(self) -> None:
        for procs in self.workers.values():
            for proc in procs:
                stop(proc)
        for proc in [self.api, *self.fakes.values()]:
            stop(proc)


def info(client: redis.Redis, section: str) -> dict[str, Any]:
    return client.info(section)  # type: ignore[return-value]


def closed_loop(url: str, model: str, total: int, stream: bool, concurrency: int = CONCURRENCY,
          quiet: bool = False) -> LoadStats:
    stats = asyncio.run(run_load(url, BROKER_KEY, model, concurrency=concurrency, total=total, stream=stream))
    if stats.errors and not quiet:
        print(f"    ({stats.errors} errors, e.g. {stats.error_samples[:1]})", flush=True)
    return stats


class Nodes:
    """Redis's side of a phase, per node (one for a standalone Redis, one per master of a Cluster): the
    redis-server's CPU, INFO commandstats calls (bench/probes.py counts them the same way) and PUBLISHes."""

    def __init__(self, clients: list[redis.Redis]) -> None:
        self.clients = clients
        self.pids = [int(info(c, "server")["process_id"]) for c in clients]

    def snap(self) -> list[tuple[float, int, int]]:
        out = []
        for client, pid in zip(self.clients, self.pids):
            stats: dict[str, dict[str, int]] = client.info("commandstats")  # type: ignore[assignment]
            out.append((tree_cpu_s(pid), sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"),
                        int(stats.get("cmdstat_publish", {}).get("calls", 0))))
        return out


def box_busy_s() -> float:
    """CPU seconds the whole box has spent busy (every core, every process: /proc/stat's first line,
    everything but idle and iowait), to tell what the stack used from what its neighbours took."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Phase(msgspec.Struct):
    cost: RoleCost  # redis_ms: all nodes together
    commands: float  # per request, all nodes
    publishes: float
    node_redis_ms: list[float]  # per request, per node
    node_commands: list[float]
    stats: LoadStats
    others_cores: float  # cores the box spent on processes outside the stack during the run

    def stack_cores(self) -> float:
        c = self.cost
        return self.stats.throughput_rps * (c.broker_ms + c.loadgen_ms + c.upstream_ms) / 1000


def run_phase(stack: Stack, nodes: Nodes, provider: str, total: int, stream: bool, concurrency: int = CONCURRENCY,
           warmup: int = 200) -> Phase:
    """One closed-loop run, CPU per request per role: the API, the provider's workers, Redis, and what
    only the benchmark runs (its load generator and the fake upstream)."""
    model = f"m-{provider}"
    closed_loop(stack.url, model, warmup, stream, concurrency)
    api, workers = Probe([stack.api.pid], None), Probe([p.pid for p in stack.workers[provider]], None)
    fake = stack.fakes[provider].pid
    a0, w0, f0, r0, b0 = api.snap(), workers.snap(), tree_cpu_s(fake), nodes.snap(), box_busy_s()
    stats = closed_loop(stack.url, model, total, stream, concurrency)
    box = (box_busy_s() - b0) / stats.elapsed_s if stats.elapsed_s > 0 else 0.0
    a, w, r1 = api.record("api", a0, stats.requests), workers.record("worker", w0, stats.requests), nodes.snap()
    n = max(stats.requests, 1)
    node_ms = [(after[0] - before[0]) * 1000 / n for before, after in zip(r0, r1)]
    node_commands = [(after[1] - before[1]) / n for before, after in zip(r0, r1)]
    cost = RoleCost(api_ms=a.broker_cpu_ms, worker_ms=w.broker_cpu_ms, redis_ms=sum(node_ms),
                    loadgen_ms=stats.client_cpu_s * 1000 / n, upstream_ms=(tree_cpu_s(fake) - f0) * 1000 / n)
    print(f"    {'stream' if stream else 'non-stream'} c={concurrency} {provider}: {stats.summary()}\n"
          f"      CPU ms/req API {cost.api_ms:.3f} worker {cost.worker_ms:.3f} Redis {cost.redis_ms:.3f} "
          f"(loadgen {cost.loadgen_ms:.3f}, fake upstream {cost.upstream_ms:.3f}); "
          f"{sum(node_commands):.1f} Redis commands/req", flush=True)
    phase = Phase(cost, sum(node_commands), sum(after[2] - before[2] for before, after in zip(r0, r1)) / n,
                  node_ms, node_commands, stats, 0.0)
    phase.others_cores = max(0.0, box - phase.stack_cores())
    return phase


def _hash_tag(key: str) -> str | None:
    """Redis Cluster's rule (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags):
    the slot follows the text between the first `{` and the next `}`, if that is not empty."""
    start_ = key.find("{")
    end = key.find("}", start_ + 1) if start_ >= 0 else -1
    return key[start_ + 1:end] if start_ >= 0 and end > start_ + 1 else None


def _tag_commands(stack: Stack, r: redis.Redis, requests: int) -> dict[str, float]:
    """Commands per non-stream request at c=1 by what picks their slot (see Inputs.tag_commands)."""
    closed_loop(stack.url, f"m-{PROVIDER_NAME}", 20, False, 1)
    ready, done, raw = threading.Event(), threading.Event(), []  # type: ignore[var-annotated]
    reader = threading.Thread(target=monitor, args=(stack.redis_url, ready, done, raw), daemon=True)
    reader.start()
    ready.wait(5)
    closed_loop(stack.url, f"m-{PROVIDER_NAME}", requests, False, 1)
    done.set()
    reader.join(2)
    keys: list[str | None] = []
    lines = b"".join(raw).decode(errors="replace").split("\r\n")
    for line in lines:
        if not line.startswith("+") or "] " not in line:
            continue
        words = shlex.split(line.partition("] ")[2])
        if not words or words[0].lower() in ("info", "monitor"):
            continue
        try:
            found = cmd(r, "COMMAND GETKEYS", *words)
            keys.append((found[0].decode() if isinstance(found[0], bytes) else str(found[0])) if found else None)
        except redis.ResponseError:  # "the command has no key arguments"
            keys.append(None)
    uses = Counter(k for k in keys if k is not None)
    out: Counter[str] = Counter()
    for key in keys:
        tag = _hash_tag(key) if key is not None else None
        if key is None:
            out[KEYLESS] += 1
        elif tag == PROVIDER_NAME:
            out[PROVIDER] += 1
        elif tag == TENANT_NAME:
            out[TENANT] += 1
        elif tag is not None:
            out["{" + tag + "}"] += 1
        elif uses[key] >= requests // 2:  # one key every request uses: one slot, whatever the load
            out[key.replace(stack.namespace, "{ns}", 1)] += 1
        else:
            out[SPREAD] += 1
    return {k: v / requests for k, v in sorted(out.items())}


def _queued(stack: Stack, r: redis.Redis, count: int) -> tuple[float, float]:
    """Redis and API bytes per request waiting in the queue: `count` streams for a provider whose one
    worker holds one call at a time (concurrency 1, a slow fake), read once all are sent. Redis's from
    MEMORY USAGE (every element: SAMPLES 0) of what a waiting job holds, its queue streams' entry and
    its slot in the tenant's in-flight set, not from used_memory, which the earlier phases' keys
    expiring meanwhile would pull down; used_memory's growth is printed beside it."""
    slow = SlowProvider("qslow", "m-qslow", stack.ports["qslow"], 2, 30.0)
    procs = serving(slow, stack.config, stack.tmp)
    try:
        used0, rss0 = int(info(r, "memory")["used_memory"]), tree_rss_bytes(stack.api.pid)

        async def go() -> tuple[float, float, int, float]:
            task = asyncio.ensure_future(open_streams(stack.url, BROKER_KEY, "m-qslow", count=count, rate=500.0))
            await asyncio.sleep(count / 500.0 + 2.0)
            used, rss = int(info(r, "memory")["used_memory"]), tree_rss_bytes(stack.api.pid)
            queues = list(r.scan_iter(match=f"{stack.namespace}:{{qslow}}:q:*"))
            entries = sum(int(cmd(r, "XLEN", k)) for k in queues)
            streams = sum(int(cmd(r, "MEMORY", "USAGE", k, "SAMPLES", 0) or 0) for k in queues)
            slots_key = f"{stack.namespace}:rl:{{{TENANT_NAME}}}:inflight"
            slots = int(cmd(r, "MEMORY", "USAGE", slots_key, "SAMPLES", 0) or 0)
            per_job = streams / max(entries, 1) + slots / max(int(cmd(r, "ZCARD", slots_key)), 1)
            task.cancel()
            return per_job, (used - used0) / max(entries, 1), entries, (rss - rss0) / max(entries, 1)

        per_job, used_per_job, entries, api_per_job = asyncio.run(go())
        print(f"    {entries} jobs in the queue's streams of {count} sent; used_memory grew {used_per_job:.0f} B "
              "per job", flush=True)
        return per_job, api_per_job
    finally:
        for proc in procs:
            stop(proc)


class Held(msgspec.Struct, kw_only=True):
    redis_bytes: float  # per open stream
    api_bytes: float
    worker_bytes: float  # per upstream call in flight, at the worker's peak RSS
    worker_idle_bytes: float
    chunks: int
    cost: RoleCost  # CPU per stream, chunks paced (each its own flush)
    commands: float  # Redis commands per stream
    publishes: float
    retained_bytes: float  # per stream, kept until its TTL


def _held(stack: Stack, r: redis.Redis, count: int, rate: float, chunks: int = 20, delay_s: float = 0.5) -> Held:
    """bench/held.py's phase: `count` streams of `chunks` chunks `delay_s` apart, held open at once.
    Memory per open stream (Redis, the API; the worker's RSS at its peak), and what a stream whose
    chunks come paced, as a model's tokens do, costs: the outbox (broker/queue/outbox.py) sends an idle
    job's chunk as soon as it comes, so each is a flush of its own, where the fast fake's 20 chunks
    leave in one or two."""
    slow = SlowProvider("hold", "m-hold", stack.ports["hold"], chunks, delay_s)
    per_event = text_per_event(f"http://127.0.0.1:{stack.ports[PROVIDER_NAME]}/v1")
    procs = serving(slow, stack.config, stack.tmp)
    try:
        worker = procs[1].pid
        asyncio.run(open_streams(stack.url, BROKER_KEY, "m-hold", count=10, rate=100))  # first-use paths
        idle, peak = tree_rss_bytes(worker), [0]
        stopping = threading.Event()

        def sample() -> None:
            while not stopping.wait(0.1):
                peak[0] = max(peak[0], tree_rss_bytes(worker))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        seen: set[bytes] = set()
        _retained(r, stack.namespace, seen, 1)  # the warm-up's
        nodes, api, workers = Nodes([r]), Probe([stack.api.pid], None), Probe([worker], None)
        # What the stack spends idle (heartbeats, polls, timers), per second: the phase lasts longer
        # than its streams' work, so that rate times its duration is taken off each role's figure.
        i0, j0, k0, t0 = api.snap(), workers.snap(), nodes.snap(), time.monotonic()
        time.sleep(3.0)
        idle_s = time.monotonic() - t0
        idle_api = (api.snap().broker_cpu_s - i0.broker_cpu_s) / idle_s
        idle_worker = (workers.snap().broker_cpu_s - j0.broker_cpu_s) / idle_s
        idle_redis = (nodes.snap()[0][0] - k0[0][0]) / idle_s
        a0, w0, f0, r0, c0 = api.snap(), workers.snap(), tree_cpu_s(procs[0].pid), nodes.snap(), time.process_time()
        began = time.monotonic()
        held = asyncio.run(hold(stack.url, BROKER_KEY, "m-hold", stack.api.pid, r, count, rate, chunks // 2,
                                 per_event))
        stopping.set()
        sampler.join()
        a, w, r1 = api.record("api", a0, count), workers.record("worker", w0, count), nodes.snap()
        idle_ms = (time.monotonic() - began) * 1000 / count  # of each role's idle second, per stream
        n = max(held.open_streams, 1)
        print(f"    idle: API {idle_api:.2%}, worker {idle_worker:.2%}, Redis {idle_redis:.2%} of a core, taken off",
              flush=True)
        cost = RoleCost(api_ms=max(0.0, a.broker_cpu_ms - idle_api * idle_ms),
                        worker_ms=max(0.0, w.broker_cpu_ms - idle_worker * idle_ms),
                        redis_ms=max(0.0, (r1[0][0] - r0[0][0]) * 1000 / count - idle_redis * idle_ms),
                        loadgen_ms=(time.process_time() - c0) * 1000 / count,
                        upstream_ms=(tree_cpu_s(procs[0].pid) - f0) * 1000 / count)
        return Held(redis_bytes=held.redis_bytes_per_stream or 0.0, api_bytes=held.api_rss_bytes_per_stream,
                    worker_bytes=(peak[0] - idle) / n, worker_idle_bytes=idle, chunks=chunks, cost=cost,
                    commands=(r1[0][1] - r0[0][1]) / count, publishes=(r1[0][2] - r0[0][2]) / count,
                    retained_bytes=_retained(r, stack.namespace, seen, count))
    finally:
        for proc in procs:
            stop(proc)


def _bus_publish_us(tmp: Path, messages: int = 200_000, size: int = 500) -> float:
    """CPU microseconds a Cluster node spends on one PUBLISH sent to another node (it arrives over the
    cluster bus, for the node's own subscribers; none here): `messages` PUBLISHes of `size` bytes, a
    reply's order of size, pipelined to the first of three masters, the other two's CPU divided by them."""
    directory = tmp / "bus"
    directory.mkdir()
    cluster = Cluster(directory, 3)
    try:
        pids = [int(info(c, "server")["process_id"]) for c in cluster.clients]
        before = [tree_cpu_s(pid) for pid in pids]
        payload = b"x" * size
        for _ in range(messages // 1000):
            pipe = cluster.clients[0].pipeline(transaction=False)
            for _ in range(1000):
                pipe.publish("cap:replies:x", payload)
            pipe.execute()
        time.sleep(0.5)  # the bus is asynchronous: let the last messages land
        others = sum(tree_cpu_s(pid) - b for pid, b in zip(pids[1:], before[1:])) / 2
        return others * 1e6 / messages
    finally:
        cluster.stop()


def _retained(r: redis.Redis, namespace: str, seen: set[bytes], requests: int) -> float:
    """Bytes per request of what finished requests leave until their TTL: the `result:` and `ev:` keys
    (broker/keys.py) made since the last call (`seen` holds the earlier ones), by MEMORY USAGE."""
    total = 0
    for kind in ("result", "ev"):
        new = [k for k in r.scan_iter(match=f"{namespace}:{kind}:*", count=1000) if k not in seen]
        seen.update(new)
        pipe = r.pipeline(transaction=False)
        for key in new:
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", 0)  # type: ignore[no-untyped-call]
        total += sum(int(size or 0) for size in pipe.execute())
    return total / max(requests, 1)


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores"


def _quiet() -> bool:
    return os.getloadavg()[0] < 0.5


@contextmanager
def own_redis() -> Iterator[str]:
    own = start_embedded_redis(prefer_real=True)
    try:
        if not own.description.startswith("redis-server"):
            raise SystemExit("bench.capacity needs redis-server on PATH")
        yield own.url
    finally:
        own.stop()


def measure(opts: argparse.Namespace) -> Inputs:
    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-capacity-"))
    lo, hi = opts.chunks
    quiet = _quiet()
    with own_redis() as url:
        r = redis.Redis.from_url(url)
        # hold: more slots than streams held, so none waits; qslow: one call at a time, so the rest wait
        stack = Stack(tmp, url, {PROVIDER_NAME: lo, "long": hi}, slow={"hold": 4096, "qslow": 1})
        try:
            api_idle = tree_rss_bytes(stack.api.pid)
            print(f"measuring on {_machine()} (load average {os.getloadavg()[0]:.2f}), logs in {tmp}", flush=True)
            # Memory first, as bench.compare does: later, the CPU phases' results would be expiring
            # (server.result_ttl_s) while Redis's memory is read.
            held = _held(stack, r, opts.hold_streams, 500.0)
            # a second paced point, so that a stream's paced cost is a line in its chunks (its fixed part,
            # a new connection per stream here among it, apart from what each chunk adds)
            held_long = _held(stack, r, opts.hold_streams // 4, 100.0, chunks=80, delay_s=0.05)
            print(f"    held streams: Redis {held.redis_bytes:.0f} B, API {held.api_bytes:.0f} B, worker "
                  f"{held.worker_bytes:.0f} B per stream", flush=True)
            for h in (held, held_long):
                print(f"    paced, per stream of {h.chunks} chunks: CPU ms API {h.cost.api_ms:.3f} worker "
                      f"{h.cost.worker_ms:.3f} Redis {h.cost.redis_ms:.3f}, {h.commands:.1f} commands, "
                      f"{h.publishes:.1f} PUBLISH, {h.retained_bytes:.0f} B kept", flush=True)
            redis_job, api_job = _queued(stack, r, opts.queued_jobs)
            print(f"    queued jobs: Redis {redis_job:.0f} B, API {api_job:.0f} B per waiting request", flush=True)
            nodes = Nodes([r])
            stack.set_workers(PROVIDER_NAME, 1)
            c1 = run_phase(stack, nodes, PROVIDER_NAME, opts.c1_requests, False, concurrency=1, warmup=50)
            seen: set[bytes] = set()
            _retained(r, stack.namespace, seen, 1)  # the earlier phases' keys, left out of what follows
            # each phase's requests: its warm-up (200) and its run, errors included: each made its keys
            non_stream = run_phase(stack, nodes, PROVIDER_NAME, opts.requests, False)
            kept = {"non-stream": _retained(r, stack.namespace, seen, 200 + opts.requests)}
            low = run_phase(stack, nodes, PROVIDER_NAME, opts.stream_requests, True)
            kept[str(lo)] = _retained(r, stack.namespace, seen, 200 + opts.stream_requests)
            tags = _tag_commands(stack, r, opts.monitor_requests)
            print(f"    commands by slot owner, per request (c=1, MONITOR): {tags}", flush=True)
            stack.set_workers(PROVIDER_NAME, 0)
            stack.set_workers("long", 1)
            _retained(r, stack.namespace, seen, 1)
            high = run_phase(stack, nodes, "long", opts.stream_requests // 2, True)
            kept[str(hi)] = _retained(r, stack.namespace, seen, 200 + opts.stream_requests // 2)
            print(f"    kept until their TTL, bytes per request: {kept}", flush=True)
            stack.set_workers("long", 0)
        finally:
            stack.stop()
    bus_us = _bus_publish_us(tmp)
    worker_concurrency, api_max_in_flight, result_ttl_s, stream_ttl_s = _config_defaults()
    print(f"    Cluster: {bus_us:.2f} us of a node's CPU per PUBLISH sent to another node", flush=True)
    return Inputs(
        measured_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), machine=_machine(),
        commit=_commit(), quiet=quiet, concurrency=CONCURRENCY, non_stream=non_stream.cost,
        stream={lo: low.cost, hi: high.cost},
        commands_non_stream={1: c1.commands, CONCURRENCY: non_stream.commands},
        commands_stream={lo: low.commands, hi: high.commands}, tag_commands=tags,
        publishes_non_stream=non_stream.publishes, publishes_stream={lo: low.publishes, hi: high.publishes},
        paced_stream={h.chunks: h.cost for h in (held, held_long)},
        commands_paced_stream={h.chunks: h.commands for h in (held, held_long)},
        publishes_paced_stream={h.chunks: h.publishes for h in (held, held_long)},
        retained_bytes_paced_stream={h.chunks: h.retained_bytes for h in (held, held_long)},
        redis_bytes_per_open_stream=held.redis_bytes, api_bytes_per_open_stream=held.api_bytes,
        worker_bytes_per_call=held.worker_bytes, redis_bytes_per_queued_job=redis_job, api_bytes_per_queued_request=api_job,
        api_idle_rss_bytes=api_idle, worker_idle_rss_bytes=held.worker_idle_bytes,
        worker_concurrency=worker_concurrency, api_max_in_flight=api_max_in_flight, bus_publish_us=bus_us,
        retained_bytes_non_stream=kept["non-stream"], retained_bytes_stream={lo: kept[str(lo)], hi: kept[str(hi)]},
        result_ttl_s=result_ttl_s, stream_ttl_s=stream_ttl_s)


def load_inputs(path: Path = INPUTS) -> Inputs:
    return msgspec.json.decode(path.read_bytes(), type=Inputs)


def print_plan(p: Plan) -> None:
    load = p.load
    print(f"{load.rps:,.0f} req/s, {load.stream_share:.0%} streams, {load.output_tokens:.0f} tokens, "
          f"upstream {load.upstream_latency_s:g} s, {load.provider_tags} provider(s), {load.tenant_tags} tenant(s), "
          f"planned at {load.utilisation:.0%} of a core")
    print(f"  CPU ms/req: API {p.cost.api_ms:.3f}, worker {p.cost.worker_ms:.3f}, Redis {p.cost.redis_ms:.3f}")
    print(f"  API processes {p.api_procs} (CPU: {p.api_procs_cpu}, {p.api_cores:.1f} cores; "
          f"in flight: {p.api_procs_conns})")
    print(f"  worker processes {p.worker_procs} (CPU: {p.worker_procs_cpu}, {p.worker_cores:.1f} cores; "
          f"calls: {p.in_flight:,.0f} in flight need {p.worker_procs_calls})")
    print(f"  Redis shards {p.redis_shards} ({p.redis_cores:.1f} cores; {p.commands_per_s:,.0f} commands/s, "
          f"{p.commands_per_shard_s:,.0f} per shard; hottest tag '{p.hot_tag}' caps at {p.hot_rps_cap:,.0f} req/s; "
          f"{p.bus_cores_per_shard:.2f} core a shard on the PUBLISH broadcast; Redis CPU/req {p.redis_ms_cluster:.3f} ms)")
    print(f"  cores {p.cores:.1f}; memory: Redis {p.redis_bytes / 1e6:,.0f} MB, API {p.api_bytes / 1e6:,.0f} MB, "
          f"workers {p.worker_bytes / 1e6:,.0f} MB")
    print(f"  first bottleneck: {p.first_bottleneck}")


def plan_rows(plans: list[Plan]) -> list[str]:
    """The worked table of docs/capacity.md, in Markdown."""
    out = ["| req/s | API processes (CPU / in flight) | worker processes (CPU / calls) | Redis shards "
           "| cores | Redis CPU ms/req | Redis memory | API memory | worker memory | first bottleneck |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for p in plans:
        out.append(f"| {p.load.rps:,.0f} | {p.api_procs} ({p.api_procs_cpu} / {p.api_procs_conns}) "
                   f"| {p.worker_procs} ({p.worker_procs_cpu} / {p.worker_procs_calls}) "
                   f"| {p.redis_shards or 'none will do'} | {p.cores:.1f} | {p.redis_ms_cluster:.3f} "
                   f"| {p.redis_bytes / 1e6:,.0f} MB | {p.api_bytes / 1e9:,.1f} GB | {p.worker_bytes / 1e9:,.1f} GB "
                   f"| {p.first_bottleneck} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure the model's inputs and write them to --out")
    m.add_argument("--out", default=str(INPUTS))
    m.add_argument("--chunks", type=int, nargs=2, default=[20, 100], help="the two chunk counts streams are measured at")
    m.add_argument("--requests", type=int, default=4000, help="non-stream requests at c=64")
    m.add_argument("--stream-requests", type=int, default=2000, help="streams at c=64 (half that for the longer)")
    m.add_argument("--c1-requests", type=int, default=500)
    m.add_argument("--monitor-requests", type=int, default=100)
    m.add_argument("--hold-streams", type=int, default=1000)
    m.add_argument("--queued-jobs", type=int, default=1000)
    v = sub.add_parser("validate", help="the model against this box: 1 vs 2 workers, 1- vs 3-master Cluster")
    v.add_argument("--inputs", default=str(INPUTS))
    v.add_argument("--requests", type=int, default=4000)
    v.add_argument("--stream-requests", type=int, default=2000)
    v.add_argument("--paced-streams", type=int, default=300, help="paced streams on each Cluster")
    pl = sub.add_parser("plan", help="what a load needs, from --inputs")
    pl.add_argument("--inputs", default=str(INPUTS))
    pl.add_argument("--rps", type=float, nargs="+", default=[1_000, 10_000, 100_000])
    pl.add_argument("--stream-share", type=float, default=0.5)
    pl.add_argument("--tokens", type=float, default=300)
    pl.add_argument("--latency-s", type=float, default=5.0)
    pl.add_argument("--providers", type=int, default=1)
    pl.add_argument("--tenants", type=int, default=1)
    pl.add_argument("--worker-concurrency", type=int, help="a provider's `concurrency` (default: the config's)")
    pl.add_argument("--markdown", action="store_true", help="one table, as docs/capacity.md has it")
    pl.add_argument("--burst", action="store_true", help="streams' chunks come back to back, not paced")
    opts = parser.parse_args()
    if opts.command == "measure":
        inputs = measure(opts)
        Path(opts.out).write_bytes(msgspec.json.format(msgspec.json.encode(inputs)) + b"\n")
        print(f"wrote {opts.out}")
    elif opts.command == "validate":
        from bench.capacity_validate import validate  # it imports this module's stack pieces
        validate(opts)
    else:
        inputs = load_inputs(Path(opts.inputs))
        plans = [plan(inputs, Load(rps=rps, stream_share=opts.stream_share, output_tokens=opts.tokens,
                                   upstream_latency_s=opts.latency_s, provider_tags=opts.providers,
                                   tenant_tags=opts.tenants, worker_concurrency=opts.worker_concurrency,
                                   paced=not opts.burst))
                 for rps in opts.rps]
        if opts.markdown:
            print("\n".join(plan_rows(plans)))
        for p in plans if not opts.markdown else []:
            print_plan(p)


if __name__ == "__main__":
    main()
