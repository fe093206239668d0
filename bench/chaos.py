"""The chaos soak (issue 24): the whole system under steady mixed load and a seeded schedule of faults.

    python -m bench.chaos                         # 30 minutes, seed 1
    python -m bench.chaos --minutes 1 --seed 7 --batch-lines 1000
    python -m bench.chaos --hosts-apart           # as root: each host a network namespace of its own

One run starts: Redis as a primary and a replica under 3 Sentinels (bench/chaos_redis.py); two fake
OpenAI upstreams whose storms it switches (bench/chaos_upstream.py); 2 API processes; workers for 2
providers (3 processes: `a` twice, `b` once; model `chat` fails over from a to b); the batch worker.
Load (bench/chaos_load.py): non-stream, streams, async jobs, resumed streams, and one batch. Faults,
from `--seed`: SIGKILL of an API process (restarted), SIGKILL of a worker (restarted), SIGSTOP of a
worker for 10 s, SIGKILL of the Redis primary (Sentinel promotes the replica; the old primary comes
back as a replica), and upstream storms of 429, 500, hangs and cut streams.

It prints what it saw and exits 1 if a check fails (bench/chaos_checks.py): clients, jobs, billing,
batch, memory.

`--hosts-apart` runs the same on HOSTS_APART, network namespaces on a bridge (bench/hosts.py): the
Redis primary and replica on hosts of their own (killing the primary is one host's Redis going away),
the third Sentinel alone, two API hosts, two worker hosts, and a storage host with the upstreams and
an S3 server (moto's) that holds the Batch API's files. Every role has its own directory, config copy
and TMPDIR; every address in a config is a 10.231.X.Y one. The load runs in the root namespace.
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
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import chaos_checks
from bench.chaos_load import Load
from bench.chaos_redis import SentinelRedis
from bench.compare import BROKER_KEY
from bench.hosts import Host, Network, require_root
from bench.procs import REPO, start, stop, wait_ready
from broker.cli.embedded_redis import free_port
from broker.config import hash_key
from tests.fakes.s3_server import S3Server

FAULTS = ("kill_api", "kill_worker", "stop_worker", "kill_primary", "storm_429", "storm_500", "storm_hang",
          "storm_cut")
STOP_S = 10
STORM_S = 8
CLIENTS = 6
SAMPLE_S = 5


def config(namespace: str, redis_url: str, upstreams: dict[str, str], batches: dict[str, object]) -> str:
    """The broker's YAML for one role (each role gets its own copy, in its own directory)."""
    return f"""
redis_url: '{redis_url}'
namespace: {namespace}
server: {{request_timeout_s: 30, async_timeout_s: 60, stream_resume_grace_s: 5}}
queue: {{heartbeat_interval_s: 1, claim_idle_s: 3}}
providers:
  a: {{kind: openai, base_url: '{upstreams["a"]}/v1', api_key: fake}}
  b: {{kind: openai, base_url: '{upstreams["b"]}/v1', api_key: fake}}
models:
  chat: [{{provider: a, model: gpt-4o-mini}}, {{provider: b, model: gpt-4o-mini}}]
tenants:
  chaos: {{keys: ['{hash_key(BROKER_KEY)}'], rpm: 100000000, tpm: 100000000000, max_concurrent: 100000}}
batches: {json.dumps({**batches, "max_in_flight": 200})}
"""


@dataclass(frozen=True)
class Layout:
    """Which host each role runs on (bench/hosts.py)."""

    redis: tuple[Host, Host]  # the first primary, the first replica
    sentinels: tuple[Host, Host, Host]
    upstream: Host  # both fake upstreams
    storage: Host | None  # the S3 server's; None: the file store is a directory every process shares
    apis: tuple[Host, ...]
    workers: tuple[tuple[str, Host], ...]  # (provider, host), one process each
    batch: Host

    @classmethod
    def one_host(cls, tmp: Path) -> Layout:
        here = Host.local(tmp)
        return cls((here, here), (here, here, here), here, None, (here, here), (("a", here), ("a", here), ("b", here)),
                   here)

    @classmethod
    def apart(cls, hosts: dict[str, Host]) -> Layout:
        """HOSTS_APART as the soak places its roles on them."""
        h = hosts
        return cls((h["redis-1"], h["redis-2"]), (h["redis-1"], h["redis-2"], h["redis-3"]), h["storage"], h["storage"],
                   (h["api-1"], h["api-2"]), (("a", h["worker-1"]), ("a", h["worker-2"]), ("b", h["worker-1"])),
                   h["worker-2"])


# Redis primary and replica on hosts of their own (with a Sentinel each; the third Sentinel alone), two API
# hosts, two worker hosts (the batch worker on the second), and one for the upstreams and the S3 store.
HOSTS_APART = ("redis-1", "redis-2", "redis-3", "api-1", "api-2", "worker-1", "worker-2", "storage")


@dataclass
class Role:
    name: str
    args: list[str]
    directory: Path  # the role's own: its config copy, its log, its TMPDIR and working directory
    proc: subprocess.Popen[bytes] | None = None
    ready: str = ""  # a URL that answers once it serves

    @property
    def log(self) -> Path:
        return self.directory / "log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class System:
    tmp: Path  # the soak's own (the load's batch file), not any role's
    redis: SentinelRedis
    upstreams: dict[str, str]  # provider → the fake's base URL
    s3: S3Server | None = None
    apis: list[Role] = field(default_factory=list)
    workers: list[Role] = field(default_factory=list)
    others: list[Role] = field(default_factory=list)
    # (SIGKILL sent, the process reaped, serving again), monotonic
    api_kills: list[tuple[float, float, float]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    t0: float = 0.0

    def note(self, text: str) -> None:
        line = f"  {time.monotonic() - self.t0:7.1f}s  {text}"
        self.events.append(line)
        print(line, flush=True)

    def procs(self) -> list[Role]:
        return [*self.apis, *self.workers, *self.others]

    def api_urls(self) -> list[str]:
        return [r.ready.removesuffix("/models") for r in self.apis]

    def stop(self) -> None:
        for role in reversed(self.procs()):
            if role.proc is not None:
                try:
                    os.killpg(role.pid, signal.SIGCONT)
                except OSError:
                    pass
                stop(role.proc)
        self.redis.stop()
        if self.s3 is not None:
            self.s3.__exit__(None, None, None)


def launch(role: Role) -> None:
    # Its own working directory and TMPDIR: nothing a role writes is where another reads. The code is
    # this checkout's, as an installed package is every host's own copy.
    # The log is appended to: a restarted role's log still holds what happened before its kill.
    role.proc = start(role.args, role.log, {"PYTHONPATH": str(REPO), "TMPDIR": str(role.directory)},
                      cwd=role.directory, append=True)


def await_ready(role: Role) -> None:
    if role.ready:
        assert role.proc is not None
        wait_ready(role.ready, role.proc, 60, {"authorization": f"Bearer {BROKER_KEY}"})


def spawn(role: Role) -> None:
    launch(role)
    await_ready(role)


@contextmanager
def running(tmp: Path, namespace: str, layout: Layout) -> Iterator[System]:
    """Every role started where `layout` puts it, and stopped on the way out, however that goes."""
    tmp.mkdir(parents=True, exist_ok=True)
    redis = SentinelRedis(layout.redis, layout.sentinels)
    up = layout.upstream
    ports = {"a": free_port(), "b": free_port()}
    system = System(tmp, redis, {name: f"http://{up.ip}:{port}" for name, port in ports.items()})
    try:
        _boot(system, namespace, layout, ports)
        yield system
    finally:
        system.stop()


def _boot(system: System, namespace: str, layout: Layout, ports: dict[str, int]) -> None:
    up, tmp = layout.upstream, system.tmp
    batches: dict[str, object] = {"files_dir": str(tmp / "files")}
    if layout.storage is not None:
        store = layout.storage
        system.s3 = S3Server(store.role_dir("s3") / "log", store.ip, store.prefix).__enter__()
        batches = {"s3": system.s3.settings(system.s3.bucket("chaos"))}
    for name, port in ports.items():
        role = Role(f"upstream-{name}", up.cmd([sys.executable, "-m", "bench.chaos_upstream", "--host", up.ip,
                                                "--port", str(port)]),
                    up.role_dir(f"upstream-{name}"), ready=f"{system.upstreams[name]}/v1/models")
        system.others.append(role)
    text = config(namespace, system.redis.url, system.upstreams, batches)

    def broker_role(name: str, host: Host, args: list[str], ready: str = "") -> Role:
        directory = host.role_dir(name)
        (directory / "broker.yaml").write_text(text)
        return Role(name, host.cmd([sys.executable, "-m", "broker.cli", args[0], "--config",
                                    str(directory / "broker.yaml"), *args[1:], "--log-level", "warning"]),
                    directory, ready=ready)

    for i, (provider, host) in enumerate(layout.workers):
        system.workers.append(broker_role(f"worker-{provider}{i}", host, ["worker", "--provider", provider]))
    system.others.append(broker_role("batch-worker", layout.batch, ["batch-worker"]))
    for i, host in enumerate(layout.apis):
        port = free_port()
        system.apis.append(broker_role(f"api-{i}", host, ["api", "--host", host.ip, "--port", str(port)],
                                f"http://{host.ip}:{port}/v1/models"))
    for r in system.procs():  # all at once, then each awaited: boot costs the slowest start, not their sum
        launch(r)
    for r in system.procs():
        await_ready(r)


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
        old = role.proc
        assert old is not None
        killed = time.monotonic()
        os.kill(old.pid, signal.SIGKILL)
        # Until the kernel has torn the killed process down, its listening socket still completes
        # handshakes, then resets them: a request sent in that moment is cut by this kill too.
        await asyncio.to_thread(old.wait)
        gone = time.monotonic()
        system.note(f"SIGKILL {role.name} (pid {old.pid}; gone after {(gone - killed) * 1000:.0f} ms), restarting it")
        await asyncio.to_thread(spawn, role)
        system.api_kills.append((killed, gone, time.monotonic()))
        system.note(f"{role.name} serving again after {time.monotonic() - killed:.1f} s")
    elif kind == "kill_worker":
        role = rng.choice(system.workers)
        os.kill(role.pid, signal.SIGKILL)
        system.note(f"SIGKILL {role.name} (pid {role.pid}), restarting it")
        await asyncio.to_thread(spawn, role)
    elif kind == "stop_worker":
        role = rng.choice(system.workers)
        os.killpg(role.pid, signal.SIGSTOP)
        system.note(f"SIGSTOP {role.name} for {STOP_S} s")
        await asyncio.sleep(STOP_S)
        os.killpg(role.pid, signal.SIGCONT)
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
            await http.post(f"{system.upstreams[provider]}/chaos/storm",
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
        rss = {group: sum(rss_mb(r.pid) for r in roles) for group, roles in
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
    load = Load(system.api_urls(), BROKER_KEY, random.Random(opts.seed + 1))
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
    died = [f"{r.name} (exit {r.proc.returncode}, see {r.log})" for r in system.procs()
            if r.proc is not None and r.proc.poll() is not None]
    if system.s3 is not None and system.s3.returncode() is not None:
        died.append(f"the S3 server (exit {system.s3.returncode()}, see {system.s3.log_path})")
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
    parser.add_argument("--hosts-apart", action="store_true",
                        help="each host a network namespace of its own, on a bridge (root only): "
                        + ", ".join(HOSTS_APART))
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs) and say where")
    opts = parser.parse_args(argv)
    if opts.hosts_apart:
        require_root()
    namespace = f"chaos-{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-chaos-"))
    # SIGTERM as Ctrl-C: the same way out, through every `finally` below (processes, namespaces, files).
    # SIGINT too, explicitly: a shell starts a background job with SIGINT ignored, and `kill -INT` must
    # still end it cleanly.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    code = 1
    try:
        with ExitStack() as stack:
            if opts.hosts_apart:
                net = stack.enter_context(Network(list(HOSTS_APART), tmp / "hosts"))
                layout = Layout.apart(net.hosts)
                print("hosts apart: " + ", ".join(f"{h.name} {h.ip}" for h in net.hosts.values())
                      + f"; the load runs in the root namespace ({net.gateway})", flush=True)
            else:
                layout = Layout.one_host(tmp)
            system = stack.enter_context(running(tmp / "load", namespace, layout))
            code = asyncio.run(soak(system, opts, namespace))
    except KeyboardInterrupt as exc:  # everything is stopped and removed by now (the `with` above)
        print(f"interrupted ({exc or 'SIGINT'}): every process stopped"
              + (", every namespace removed" if opts.hosts_apart else ""), file=sys.stderr, flush=True)
        code = 130
    finally:
        if opts.keep:
            print(f"logs in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(code)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    main()
