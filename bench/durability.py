"""What `redis.durability: replicated` adds to a request: two brokers on one primary with one replica
(redis-server --replicaof, both local), one with the default `async`, one `replicated`, over one fake
upstream, loaded at c=1 in alternating rounds (bench.compare's c=1 latency: bench/loadgen.py), so a
neighbour's load or a drift weighs on both alike. Prints each round's p50/p99, the mean difference,
the WAITs each request sent (INFO commandstats: deterministic, unlike the timings) and the replica
round trip a WAIT adds to one pipeline, timed alone from the bench's process.

    python -m bench.durability                   # 6 rounds of 300 non-stream and 100 stream requests
    python -m bench.durability --same            # both `async`: the spread of the measurement itself

README ("What a Sentinel failover can lose") has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench import loadgen
from bench.compare import BROKER_KEY
from bench.procs import start, stop, wait_ready
from broker.cli.embedded_redis import free_port
from broker.config import hash_key

MODES = (("non-stream", False), ("stream", True))


def _config(redis_port: int, upstream_port: int, namespace: str, replicated: bool) -> str:
    return (f"redis_url: redis://127.0.0.1:{redis_port}/0\nnamespace: {namespace}\n"
            + ("redis: {durability: replicated, replicas: 1}\n" if replicated else "")
            + f"providers:\n  up: {{kind: openai, base_url: 'http://127.0.0.1:{upstream_port}/v1', api_key: fake, "
            "concurrency: 64}\n"
            "models:\n  fake-model: [{provider: up, model: fake-model}]\n"
            f"tenants:\n  bench: {{keys: ['{hash_key(BROKER_KEY)}'], rpm: 100000000, tpm: 100000000000}}\n")


def _redis(port: int, directory: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--dir", str(directory),
                             "--dbfilename", f"dump-{port}.rdb", *extra], stdout=subprocess.DEVNULL)


def _synced(replica_port: int) -> bool:
    try:
        return redis.Redis(port=replica_port).info("replication").get("master_link_status") == "up"
    except redis.ConnectionError:
        return False


def _waits(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def _round_trips(primary: redis.Redis, blocks: int = 20, each: int = 100) -> tuple[float, float]:
    """Median µs of a pipeline [SET, WAIT 1] and of [SET] alone, in alternating blocks: the replica
    round trip WAIT adds, without the broker's own spread around it. (Redis 7.0's INFO latencystats
    does not time a WAIT that blocked, and commandstats counts its CPU only.)"""
    timed: dict[bool, list[float]] = {True: [], False: []}
    for block in range(blocks):
        for waits in ((True, False) if block % 2 == 0 else (False, True)):
            for i in range(each):
                pipe = primary.pipeline(transaction=False)
                pipe.set("bench-durability-probe", i, px=60_000)
                if waits:
                    pipe.execute_command("WAIT", 1, 1000)
                started = time.perf_counter()
                pipe.execute()
                timed[waits].append((time.perf_counter() - started) * 1e6)
    return statistics.median(timed[True]), statistics.median(timed[False])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=300, help="non-stream, per round and broker")
    parser.add_argument("--stream-requests", type=int, default=100, help="stream, per round and broker")
    parser.add_argument("--same", action="store_true",
                        help="both brokers `async`: what this reads when nothing differs")
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-durability-"))
    upstream_port, primary_port, replica_port = free_port(), free_port(), free_port()
    servers = [_redis(primary_port, tmp)]
    time.sleep(0.3)
    servers.append(_redis(replica_port, tmp, "--replicaof", "127.0.0.1", str(primary_port)))
    primary = redis.Redis(port=primary_port)
    procs = [start([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(upstream_port),
                    "--chunks", "20"], tmp / "upstream.log")]
    brokers: dict[str, str] = {}
    try:
        end = time.monotonic() + 10
        while not _synced(replica_port):
            assert time.monotonic() < end, "the replica never synced"
            time.sleep(0.1)
        wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models", procs[0], 30)
        for name, replicated in (("async", False), ("async-too", False) if opts.same else ("replicated", True)):
            config, api_port = tmp / f"{name}.yaml", free_port()
            config.write_text(_config(primary_port, upstream_port, f"dur-{name}", replicated))
            procs.append(start([sys.executable, "-m", "broker.cli", "worker", "--config", str(config), "--provider",
                                "up", "--log-level", "warning"], tmp / f"worker-{name}.log"))
            procs.append(start([sys.executable, "-m", "broker.cli", "api", "--config", str(config), "--host",
                                "127.0.0.1", "--port", str(api_port), "--log-level", "warning"],
                               tmp / f"api-{name}.log"))
            brokers[name] = f"http://127.0.0.1:{api_port}/v1"
            wait_ready(f"{brokers[name]}/models", procs[-1], 60, {"authorization": f"Bearer {BROKER_KEY}"})
        time.sleep(1.0)  # the workers' first heartbeats

        def load(name: str, stream: bool, total: int) -> loadgen.LoadStats:
            return asyncio.run(loadgen.run_load(brokers[name], BROKER_KEY, "fake-model", concurrency=1, total=total,
                                                stream=stream))

        for name in brokers:
            for _, stream in MODES:
                load(name, stream, 50)  # warm-up
        p50: dict[tuple[str, str], list[float]] = {(n, m): [] for n in brokers for m, _ in MODES}
        p99: dict[tuple[str, str], list[float]] = {(n, m): [] for n in brokers for m, _ in MODES}
        waits: dict[str, list[float]] = {name: [] for name in brokers}
        for round_ in range(opts.rounds):
            for name in (tuple(brokers) if round_ % 2 == 0 else tuple(reversed(brokers))):
                before, requests = _waits(primary), 0
                for mode, stream in MODES:
                    stats = load(name, stream, opts.stream_requests if stream else opts.requests)
                    p50[name, mode].append(stats.latency_p50_ms)
                    p99[name, mode].append(stats.latency_p99_ms)
                    requests += stats.requests
                time.sleep(0.2)  # the last end's ledger flush
                waits[name].append((_waits(primary) - before) / requests)
            print(f"round {round_ + 1}: " + "   ".join(
                f"{name} {mode} p50 {p50[name, mode][-1]:.2f} p99 {p99[name, mode][-1]:.2f} ms"
                for name in brokers for mode, _ in MODES), flush=True)
        base, other = tuple(brokers)
        for mode, _ in MODES:
            diffs = [b - a for a, b in zip(p50[base, mode], p50[other, mode])]
            tails = [b - a for a, b in zip(p99[base, mode], p99[other, mode])]
            was, now = statistics.mean(p50[base, mode]), statistics.mean(p50[other, mode])
            print(f"{mode:>10}: p50 {was:.2f} -> {now:.2f} ms,"
                  f" added {statistics.mean(diffs):+.2f} ms (rounds {min(diffs):+.2f}..{max(diffs):+.2f});"
                  f" p99 added {statistics.mean(tails):+.2f} ms")
        for name in brokers:
            print(f"WAIT per request, {name}: {statistics.mean(waits[name]):.2f}")
        with_wait, without = _round_trips(primary)
        print(f"one write's round trip from this process, median: {without:.0f} us, with WAIT 1 in its pipeline "
              f"{with_wait:.0f} us ({with_wait - without:+.0f} us)")
    finally:
        for proc in procs:
            stop(proc)
        for server in servers:
            server.terminate()


if __name__ == "__main__":
    main()
