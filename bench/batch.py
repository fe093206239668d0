"""A large Batch API batch against the mock provider: lines/s, peak RSS per process, Redis memory.

    python -m bench.batch                      # 100,000 lines
    python -m bench.batch --lines 20000 --max-in-flight 2000

Starts `llm-broker api`, a mock-provider `worker` and a `batch-worker` on Redis ($REDIS_URL, else
127.0.0.1:6379, in a namespace of its own), uploads one JSONL file through /v1/files, runs it as
a batch and reads its output back. It prints the throughput, each process's peak RSS (VmHWM) and
Redis's memory before, at its highest while the batch ran, and after (the batch's keys expire
with their TTLs), so "bounded memory in every process" is a figure, not a claim.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from bench.compare import BROKER_KEY
from bench.procs import start, stop, wait_ready
from broker.cli.embedded_redis import free_port
from broker.config import hash_key


def config(namespace: str, redis_url: str, files_dir: Path, max_in_flight: int) -> str:
    return f"""
redis_url: {redis_url}
namespace: {namespace}
server: {{async_result_ttl_s: 600}}
providers:
  mock: {{kind: mock, tokens: 8}}
models:
  m: [{{provider: mock, model: m}}]
tenants:
  bench: {{keys: ['{hash_key(BROKER_KEY)}']}}
batches: {{files_dir: {files_dir}, max_in_flight: {max_in_flight}, max_lines: 1000000}}
"""


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--worker-concurrency", type=int, default=512)
    args = parser.parse_args(argv)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = f"bench-batch-{secrets.token_hex(4)}"
    r = redis.Redis.from_url(redis_url)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="llm-broker-bench-batch-") as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "broker.yaml"
        path.write_text(config(namespace, redis_url, tmp / "files", args.max_in_flight))
        try:
            port = free_port()
            cli = [sys.executable, "-m", "broker.cli"]
            procs.append(start([*cli, "worker", "--config", str(path), "--provider", "mock", "--concurrency",
                                str(args.worker_concurrency), "--log-level", "error"], tmp / "worker.log"))
            procs.append(start([*cli, "batch-worker", "--config", str(path), "--log-level", "warning"],
                               tmp / "batch-worker.log"))
            procs.append(start([*cli, "api", "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "warning"], tmp / "api.log"))
            base = f"http://127.0.0.1:{port}/v1"
            headers = {"authorization": f"Bearer {BROKER_KEY}"}
            wait_ready(f"{base}/models", procs[-1], 60, headers)
            names = {procs[0].pid: "worker", procs[1].pid: "batch-worker", procs[2].pid: "api"}
            run(base, headers, args.lines, tmp, r, namespace, names)
        finally:
            for proc in procs:
                stop(proc)


def run(base: str, headers: dict[str, str], count: int, tmp: Path, r: redis.Redis, namespace: str,
        names: dict[int, str]) -> None:
    source = tmp / "input.jsonl"
    with open(source, "wb") as f:
        for i in range(count):
            f.write(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]}
                                }).encode() + b"\n")
    redis_before = r.info("memory")["used_memory"]
    with httpx.Client(base_url=base, headers=headers, timeout=300) as api:
        t0 = time.perf_counter()
        with open(source, "rb") as f:
            uploaded = api.post("/files", files={"file": ("input.jsonl", f)}, data={"purpose": "batch"}).json()
        upload_s = time.perf_counter() - t0
        batch = api.post("/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions",
                                           "completion_window": "24h"}).json()
        started = time.perf_counter()
        redis_peak, last_print = redis_before, 0.0
        while True:
            batch = api.get(f"/batches/{batch['id']}").json()
            redis_peak = max(redis_peak, r.info("memory")["used_memory"])
            counts = batch["request_counts"]
            if time.perf_counter() - last_print > 5:
                print(f"  {batch['status']:<12} {counts['completed'] + counts['failed']:>7}/{counts['total']}",
                      flush=True)
                last_print = time.perf_counter()
            if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                break
            time.sleep(0.5)
        took = time.perf_counter() - started
        lines = sum(1 for _ in api.get(f"/files/{batch['output_file_id']}/content").iter_lines()) \
            if batch.get("output_file_id") else 0
    rss = {name: peak_rss_mb(pid) for pid, name in names.items()}
    cpu = {name: cpu_s(pid) for pid, name in names.items()}
    redis_after = r.info("memory")["used_memory"]
    keys = sum(1 for _ in r.scan_iter(f"{namespace}:*", count=1000))
    mb = 1024 * 1024
    print(f"\nbatch of {count} lines: status {batch['status']}, {batch['request_counts']}, output lines {lines}")
    print(f"  upload + validation  {upload_s:.1f} s ({source.stat().st_size / mb:.1f} MB)")
    print(f"  run                  {took:.1f} s = {count / took:.0f} lines/s")
    print("  peak RSS             " + ", ".join(f"{name} {mb_:.0f} MB" for name, mb_ in rss.items()))
    print("  CPU                  " + ", ".join(f"{name} {s_:.1f} s" for name, s_ in cpu.items()))
    print(f"  Redis used_memory    {redis_before / mb:.1f} MB before, {redis_peak / mb:.1f} MB at most while "
          f"running, {redis_after / mb:.1f} MB after ({keys} keys left in the namespace; a written line's "
          "result leaves Redis with it)")


if __name__ == "__main__":
    main()
