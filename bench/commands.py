"""Redis commands per plain chat request, by command, and the sequence one request runs (issue 22).

    python -m bench.commands                     # 500 requests at c=1, 1,000 at c=50, one request's trace
    python -m bench.commands -n 200 --c50 0      # c=1 only
    python -m bench.commands --no-trace

The same stack as bench.compare's (bench/compare.py): a redis-server of its own (a free port, nothing
persisted), the fake OpenAI upstream, one `llm-broker worker` and one `llm-broker api`, a tenant with
rate limits, a concurrency limit and the ledger on (limits too high to bite, so every request pays for
them). It sends plain non-stream chat requests (bench/loadgen.py) and prints INFO commandstats' `calls`
deltas divided by the requests, per command: the count bench.probes sums (Lua's inner commands
included, `info` left out). What the processes run while idle (heartbeats, the worker's blocking pull
timing out) is counted over as long a quiet spell and shown beside it, so a per-request figure can be
told from a per-second one.

The trace is one request under MONITOR: every command in order, from which process (the client's port
mapped to the API or the worker through /proc), and the commands each script ran, under the script's
file name (its SHA1 matched against broker/store/lua/*.lua).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import redis
from redis.asyncio import Redis as AsyncRedis

from bench.loadgen import run_load
from bench.probes import _tree
from bench.procs import REPO, start, stop, wait_ready
from broker.cli.embedded_redis import free_port, start_embedded_redis
from broker.config import hash_key
from broker.queue.streams import QueueScripts

KEY = "sk-bench-broker"


def _calls(r: redis.Redis) -> dict[str, int]:
    stats: dict[str, dict[str, int]] = r.info("commandstats")  # type: ignore[assignment]
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}


def _scripts() -> dict[str, str]:
    named = {hashlib.sha1(p.read_bytes()).hexdigest(): p.stem for p in (REPO / "broker/store/lua").glob("*.lua")}
    # Scripts made of several files (broker/store/scripts.py `composed`) are named by their main file.
    named.update({script.sha: name
                  for name, script in QueueScripts(AsyncRedis()).named().items()})
    return named


def _owners(pids: dict[str, int]) -> dict[int, str]:
    """Local TCP port -> the name of the process (tree) holding that socket."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            inodes[cols[9]] = int(cols[1].rsplit(":", 1)[1], 16)
    out: dict[int, str] = {}
    for name, root in pids.items():
        for pid in _tree(root):
            try:
                fds = list(Path(f"/proc/{pid}/fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    target = fd.readlink().name
                except OSError:
                    continue
                if target.startswith("socket:[") and (port := inodes.get(target[8:-1])) is not None:
                    out[port] = name
    return out


def _table(label: str, delta: dict[str, int], requests: int, idle: dict[str, int], idle_s: float,
           took_s: float) -> list[str]:
    total = sum(delta.values())
    lines = [f"{label}: {total / requests:.2f} commands/request ({total} over {requests} requests, {took_s:.1f} s); "
             f"idle background over as long: {sum(idle.values()) * took_s / idle_s / requests:.2f}/request"]
    for cmd, n in sorted(delta.items(), key=lambda kv: -kv[1]):
        background = idle.get(cmd, 0) * took_s / idle_s / requests
        lines.append(f"  {cmd:<22} {n / requests:7.3f}" + (f"   (idle: {background:.3f})" if background else ""))
    return lines


def _trace(redis_url: str, base_url: str, pids: dict[str, int]) -> list[str]:
    url = urlsplit(redis_url)
    raw: list[bytes] = []
    ready, stop_ev = threading.Event(), threading.Event()

    def read() -> None:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379)) as sock:
            sock.sendall(b"MONITOR\r\n")
            sock.settimeout(0.05)
            ready.set()
            while not stop_ev.is_set():
                try:
                    raw.append(sock.recv(1 << 16))
                except TimeoutError:
                    continue

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ready.wait(5)
    time.sleep(0.05)
    sent = time.time()
    asyncio.run(run_load(base_url, KEY, "fake-model", concurrency=1, total=1, stream=False))
    done = time.time()
    time.sleep(0.05)
    stop_ev.set()
    reader.join(2)
    owners, scripts = _owners(pids), _scripts()
    lines, inside, count = [], 0, 0
    for line in b"".join(raw).decode(errors="replace").split("\r\n"):
        if not line.startswith("+") or " [" not in line:
            continue
        stamp, _, rest = line[1:].partition(" [")
        client, _, command = rest.partition("] ")
        if not sent <= float(stamp) <= done:
            continue
        words = shlex.split(command)
        count += 1
        offset = f"{(float(stamp) - sent) * 1000:+8.3f} ms"
        if client.endswith("lua"):
            inside += 1
            lines.append(f"  {offset}            {words[0].upper():<10} " + " ".join(w[:50] for w in words[1:3]))
            continue
        who = owners.get(int(client.rsplit(":", 1)[1]), "?")
        what = " ".join(w[:50] for w in words[1:3])
        if words[0].upper() in ("EVALSHA", "EVAL"):
            what = f"{scripts.get(words[1], words[1][:12])}.lua"
        lines.append(f"  {offset}  {who:<8}  {words[0].upper():<10} {what}")
    return [f"one request under MONITOR: {count} commands ({inside} inside scripts; heartbeats and idle "
            "polls in that window included)"] + lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--c1", type=int, default=500, help="requests at c=1")
    parser.add_argument("--c50", type=int, default=1000, help="requests at c=50 (0: none)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--trace", action=argparse.BooleanOptionalAction, default=True)
    opts = parser.parse_args()

    own = start_embedded_redis(prefer_real=True)
    if not own.description.startswith("redis-server"):
        own.stop()
        raise SystemExit("bench.commands needs redis-server on PATH")
    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-commands-"))
    upstream_port, api_port = free_port(), free_port()
    (tmp / "broker.yaml").write_text(
        f"redis_url: {own.url}\nnamespace: bench-{uuid.uuid4().hex[:8]}\n"
        f"providers:\n  up: {{kind: openai, base_url: 'http://127.0.0.1:{upstream_port}/v1', api_key: fake, "
        "concurrency: 256}\nmodels:\n  fake-model: [{provider: up, model: fake-model}]\n"
        # As bench.compare's: limits high enough never to bite, so every request pays for them.
        f"tenants:\n  bench: {{keys: ['{hash_key(KEY)}'], rpm: 100000000, tpm: 100000000000, "
        "max_concurrent: 100000}\n")
    config = str(tmp / "broker.yaml")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(start([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(upstream_port),
                            "--chunks", "20"], tmp / "upstream.log"))
        wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models", procs[0], 30)
        procs.append(start([sys.executable, "-m", "broker.cli", "worker", "--config", config, "--provider", "up",
                            "--log-level", "warning"], tmp / "worker.log"))
        procs.append(start([sys.executable, "-m", "broker.cli", "api", "--config", config, "--host", "127.0.0.1",
                            "--port", str(api_port), "--log-level", "warning"], tmp / "api.log"))
        base_url = f"http://127.0.0.1:{api_port}/v1"
        wait_ready(f"{base_url}/models", procs[-1], 60)
        r = redis.Redis.from_url(own.url)
        asyncio.run(run_load(base_url, KEY, "fake-model", concurrency=8, total=opts.warmup, stream=False))
        time.sleep(0.5)
        idle_s = 3.0
        before = _calls(r)
        time.sleep(idle_s)
        idle = _delta(before, _calls(r))
        print(f"redis: {own.description}; logs in {tmp}")
        print(f"idle: {sum(idle.values()) / idle_s:.1f} commands/s "
              + ", ".join(f"{k} {v / idle_s:.1f}" for k, v in sorted(idle.items(), key=lambda kv: -kv[1])))
        for c, n in ((1, opts.c1), (50, opts.c50)):
            if n <= 0:
                continue
            before, began = _calls(r), time.monotonic()
            stats = asyncio.run(run_load(base_url, KEY, "fake-model", concurrency=c, total=n, stream=False))
            took = time.monotonic() - began
            delta = _delta(before, _calls(r))
            if stats.errors:
                print(f"  ({stats.errors} errors: {stats.error_samples[:2]})")
            print("\n".join(_table(f"c={c}", delta, stats.requests, idle, idle_s, took)))
        if opts.trace:
            print("\n".join(_trace(own.url, base_url, {"api": procs[2].pid, "worker": procs[1].pid})))
    finally:
        for proc in reversed(procs):
            stop(proc)
        own.stop()


if __name__ == "__main__":
    main()
