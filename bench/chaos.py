"""The chaos soak (issue 24): the whole system under steady mixed load and a seeded schedule of faults.

    python -m bench.chaos                         # 30 minutes, seed 1
    python -m bench.chaos --minutes 1 --seed 7 --batch-lines 1000

One run starts: Redis as a primary and a replica under 3 Sentinels (bench/chaos_redis.py); two fake
OpenAI upstreams whose storms it switches (bench/chaos_upstream.py); 2 API processes; workers for 2
providers (3 processes: `a` twice, `b` once; model `chat` fails over from a to b); the batch worker.
Load (bench/chaos_load.py): non-stream, streams, async jobs, resumed streams, and one batch. Faults,
from `--seed`: SIGKILL of an API process (restarted), SIGKILL of a worker (restarted), SIGSTOP of a
worker for 10 s, SIGKILL of the Redis primary (Sentinel promotes the replica; the old primary comes
back as a replica), and upstream storms of 429, 500, hangs and cut streams.

It prints what it saw and exits 1 if a check fails (bench/chaos_checks.py): clients, jobs, billing,
batch, memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import chaos_checks
from bench.chaos_load import Load
from bench.chaos_redis import SentinelRedis
from bench.compare import BROKER_KEY
from bench.procs import start, stop, wait_ready
from broker.cli.embedded_redis import free_port
from broker.config import hash_key

FAULTS = ("kill_api", "kill_worker", "stop_worker", "kill_primary", "storm_429", "storm_500", "storm_hang",
          "storm_cut")
STOP_S = 10
STORM_S = 8
CLIENTS = 6
SAMPLE_S = 5


def config(namespace: str, redis_url: str, ports: dict[str, int], files: Path) -> str:
    return f"""
redis_url: '{redis_url}'
namespace: {namespace}
server: {{request_timeout_s: 30, async_timeout_s: 60, stream_resume_grace_s: 5}}
queue: {{heartbeat_interval_s: 1, claim_idle_s: 3}}
providers:
  a: {{kind: openai, base_url: 'http://127.0.0.1:{ports["a"]}/v1', api_key: fake}}
  b: {{kind: openai, base_url: 'http://127.0.0.1:{ports["b"]}/v1', api_key: fake}}
models:
  chat: [{{provider: a, model: gpt-4o-mini}}, {{provider: b, model: gpt-4o-mini}}]
tenants:
  chaos: {{keys: ['{hash_key(BROKER_KEY)}'], rpm: 100000000, tpm: 100000000000, max_concurrent: 100000}}
batches: {{files_dir: '{files}', max_in_flight: 200}}
"""


@dataclass
class Role:
    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes]
    ready: str = ""  # a URL that answers once it serves


@dataclass
class System:
    tmp: Path
    redis: SentinelRedis
    upstreams: dict[str, int]
    apis: list[Role] = field(default_factory=list)
    workers: list[Role] = field(default_factory=list)
    others: list[Role] = field(default_factory=list)
    api_kills: list[tuple[float, float]] = field(default_factory=list)  # (killed, serving again), monotonic
    events: list[str] = field(default_factory=list)
    t0: float = 0.0

    def note(self, text: str) -> None:
        line = f"  {time.monotonic() - self.t0:7.1f}s  {text}"
        self.events.append(line)
        print(line, flush=True)

    def procs(self) -> list[Role]:
        return [*self.apis, *self.workers, *self.others]


def spawn(role: Role) -> None:
    role.proc = start(role.args, role.log)
    if role.ready:
        wait_ready(role.ready, role.proc, 60, {"authorization": f"Bearer {BROKER_KEY}"})


def boot(tmp: Path, namespace: str) -> System:
    redis = SentinelRedis(tmp / "redis")
    ports = {"a": free_port(), "b": free_port()}
    system = System(tmp, redis, ports)
    for name, port in ports.items():
        role = Role(f"upstream-{name}", [sys.executable, "-m", "bench.chaos_upstream", "--port", str(port)],
                    tmp / f"upstream-{name}.log", None,  # type: ignore[arg-type]
                    f"http://127.0.0.1:{port}/v1/models")
        spawn(role)
        system.others.append(role)
    path = tmp / "broker.yaml"
    path.write_text(config(namespace, redis.url, ports, tmp / "files"))
    cli = [sys.executable, "-m", "broker.cli"]
    for i, provider in enumerate(("a", "a", "b")):
        role = Role(f"worker-{provider}{i}", [*cli, "worker", "--config", str(path), "--provider", provider,
                                             "--log-level", "warning"], tmp / f"worker-{i}.log", None)  # type: ignore[arg-type]
        spawn(role)
        system.workers.append(role)
    batch = Role("batch-worker", [*cli, "batch-worker", "--config", str(path), "--log-level", "warning"],
                 tmp / "batch-worker.log", None)  # type: ignore[arg-type]
    spawn(batch)
    system.others.append(batch)
    for i in range(2):
        port = free_port()
        role = Role(f"api-{i}", [*cli, "api", "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
                                 "--log-level", "warning"], tmp / f"api-{i}.log", None,  # type: ignore[arg-type]
                    f"http://127.0.0.1:{port}/v1/models")
        spawn(role)
        system.apis.append(role)
    return system


def schedule(rng: random.Random, minutes: float) -> list[tuple[float, str]]:
    """Faults at seeded times: every kind once per round, rounds shuffled, spread over 10 %..85 % of the run."""
    duration = minutes * 60
    count = max(len(FAULTS), int(minutes * 6))
    kinds: list[str] = []
    while len(kinds) < count:
        kinds += rng.sample(FAULTS, len(FAULTS))
    span = duration * 0.75 / count
    return [(duration * 0.1 + i * span + rng.uniform(0, span * 0.5), kind) for i, kind in enumerate(kinds[:count])]


async def inject(system: System, rng: random.Random, kind: str) -> None:
    if kind == "kill_api":
        role = rng.choice(system.apis)
        role.proc.kill()
        killed = time.monotonic()
        system.note(f"SIGKILL {role.name} (pid {role.proc.pid}), restarting it")
        await asyncio.to_thread(spawn, role)
        system.api_kills.append((killed, time.monotonic()))
        system.note(f"{role.name} serving again after {time.monotonic() - killed:.1f} s")
    elif kind == "kill_worker":
        role = rng.choice(system.workers)
        role.proc.kill()
        system.note(f"SIGKILL {role.name} (pid {role.proc.pid}), restarting it")
        await asyncio.to_thread(spawn, role)
    elif kind == "stop_worker":
        role = rng.choice(system.workers)
        os.killpg(role.proc.pid, signal.SIGSTOP)
        system.note(f"SIGSTOP {role.name} for {STOP_S} s")
        await asyncio.sleep(STOP_S)
        os.killpg(role.proc.pid, signal.SIGCONT)
        system.note(f"SIGCONT {role.name}")
    elif kind == "kill_primary":
        system.note("SIGKILL the Redis primary")
        promoted_s, behind = await asyncio.to_thread(system.redis.fail_over)
        system.note(f"Sentinel promoted the replica after {promoted_s:.1f} s (it was {behind} bytes behind); "
                    "the old primary is back as its replica")
    else:
        mode = kind.removeprefix("storm_")
        provider = rng.choice(sorted(system.upstreams))
        async with httpx.AsyncClient() as http:
            await http.post(f"http://127.0.0.1:{system.upstreams[provider]}/chaos/storm",
                            json={"mode": mode, "seconds": STORM_S})
        system.note(f"upstream {provider}: a storm of {mode} for {STORM_S} s")


async def faults(system: System, rng: random.Random, plan: list[tuple[float, str]]) -> None:
    for at, kind in plan:
        await asyncio.sleep(max(0.0, system.t0 + at - time.monotonic()))
        try:
            await inject(system, rng, kind)
        except Exception as exc:  # a fault that could not be injected is reported, not fatal to the run
            system.note(f"{kind} failed: {type(exc).__name__}: {exc}")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def sample_memory(system: System, samples: list[chaos_checks.Sample], stop_at: float) -> None:
    while True:
        redis_mb = -1.0
        try:
            client = await asyncio.to_thread(system.redis.primary)
            redis_mb = (await asyncio.to_thread(client.info, "memory"))["used_memory"] / 2**20
            client.close()
        except Exception:
            pass
        rss = {group: sum(rss_mb(r.proc.pid) for r in roles) for group, roles in
               (("api", system.apis), ("workers", system.workers),
                ("batch", [r for r in system.others if r.name == "batch-worker"]))}
        samples.append(chaos_checks.Sample(time.monotonic() - system.t0, redis_mb, rss))
        if time.monotonic() > stop_at:
            return
        await asyncio.sleep(SAMPLE_S)


async def run_batch(system: System, lines: int) -> chaos_checks.BatchResult:
    source = system.tmp / "batch.jsonl"
    with open(source, "w") as f:
        for i in range(lines):
            f.write(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "chat", "max_tokens": 8,
                                         "messages": [{"role": "user", "content": f"batch {i}"}]}}) + "\n")
    headers = {"authorization": f"Bearer {BROKER_KEY}"}
    async with httpx.AsyncClient(headers=headers, timeout=120) as http:
        base = system.apis[0].ready.removesuffix("/models")
        with open(source, "rb") as f:
            uploaded = (await http.post(f"{base}/files", files={"file": ("batch.jsonl", f)},
                                        data={"purpose": "batch"})).json()
        batch = (await http.post(f"{base}/batches", json={"input_file_id": uploaded["id"],
                                                           "endpoint": "/v1/chat/completions",
                                                           "completion_window": "24h"})).json()
        system.note(f"batch {batch['id']} of {lines} lines submitted")
        return chaos_checks.BatchResult(batch["id"], lines)


async def finish_batch(system: System, result: chaos_checks.BatchResult, wait_s: float) -> None:
    headers = {"authorization": f"Bearer {BROKER_KEY}"}
    end = time.monotonic() + wait_s
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        while time.monotonic() < end:
            base = random.choice(system.apis).ready.removesuffix("/models")
            try:
                batch = (await http.get(f"{base}/batches/{result.batch_id}")).json()
            except (httpx.TransportError, ValueError):
                await asyncio.sleep(1)
                continue
            result.status, result.counts = batch.get("status", "?"), batch.get("request_counts", {})
            if result.status in ("completed", "failed", "expired", "cancelled"):
                for field_name in ("output_file_id", "error_file_id"):
                    if batch.get(field_name):
                        content = await http.get(f"{base}/files/{batch[field_name]}/content")
                        result.custom_ids += [json.loads(line)["custom_id"] for line in content.text.splitlines()
                                              if line.strip()]
                return
            await asyncio.sleep(2)


async def soak(system: System, opts: argparse.Namespace, namespace: str) -> int:
    rng = random.Random(opts.seed)
    plan = schedule(rng, opts.minutes)
    system.t0 = time.monotonic()
    stop_at = system.t0 + opts.minutes * 60
    print(f"chaos soak: {opts.minutes:g} min, seed {opts.seed}, {len(plan)} faults: "
          + ", ".join(f"{kind}@{at:.0f}s" for at, kind in plan), flush=True)
    load = Load([r.ready.removesuffix("/models") for r in system.apis], BROKER_KEY, random.Random(opts.seed + 1))
    samples: list[chaos_checks.Sample] = []
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)  # a killed API: no stale sockets
    async with httpx.AsyncClient(limits=limits) as http:
        batch = await run_batch(system, opts.batch_lines)
        tasks = [asyncio.create_task(load.client(http, stop_at)) for _ in range(CLIENTS)]
        memory = asyncio.create_task(sample_memory(system, samples, stop_at + 10_000))
        await faults(system, random.Random(opts.seed + 2), plan)
        await asyncio.gather(*tasks)
        system.note(f"load stopped after {load.sent} requests; draining")
        await finish_batch(system, batch, opts.drain_s)
        memory.cancel()
    system.note(f"batch {batch.status}: {batch.counts}")
    primary = system.redis.primary()
    # A process the soak did not kill that is gone: what crashed on its own (its log says why).
    died = [f"{r.name} (exit {r.proc.returncode}, see {r.log})" for r in system.procs() if r.proc.poll() is not None]
    report = chaos_checks.check(load.outcomes, system.api_kills, primary, namespace, batch, samples, died)
    primary.close()
    print(report.text(), flush=True)
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-lines", type=int, default=10_000)
    parser.add_argument("--drain-s", type=float, default=180, help="how long the batch may take after the load")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs) and say where")
    opts = parser.parse_args(argv)
    namespace = f"chaos-{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-chaos-"))
    system: System | None = None
    try:
        system = boot(tmp, namespace)
        code = asyncio.run(soak(system, opts, namespace))
    finally:
        if system is not None:
            for role in reversed(system.procs()):
                if role.proc is not None:
                    try:
                        os.killpg(role.proc.pid, signal.SIGCONT)
                    except OSError:
                        pass
                    stop(role.proc)
            system.redis.stop()
        if opts.keep:
            print(f"logs in {tmp}")
        else:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
