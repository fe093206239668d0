"""Broker vs. the upstream alone vs. LiteLLM proxy, same fake upstream, same load.

    python -m bench.compare                      # broker + direct (+ LiteLLM if installed)
    python -m bench.compare --litellm-workers 1 2 --requests 5000

Starts the fake OpenAI upstream (tests/fakes/openai_upstream.py) in its own
process, then `llm-broker api` + `llm-broker worker` processes on Redis
($REDIS_URL, else 127.0.0.1:6379), and, when a LiteLLM proxy is installed
(`--litellm-bin` or $LITELLM_BIN, default /opt/litellm-venv/bin/litellm; install it in its own
venv: `python3 -m venv /opt/litellm-venv && /opt/litellm-venv/bin/pip install
'litellm[proxy]'`), the proxy with no database in front of the same upstream.
Every target gets the same requests from bench/loadgen.py; the table shows
throughput, latency, TTFT, the latency the broker adds over the direct call,
and the broker/LiteLLM ratio. Redis memory before/after shows nothing is left.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis

from bench.loadgen import LoadStats, run_load
from broker.cli.embedded_redis import free_port
from broker.config import hash_key

REPO = Path(__file__).resolve().parent.parent
BROKER_KEY = "sk-bench-broker"
LITELLM_KEY = "sk-bench"


def start(args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=cwd,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float, headers: dict[str, str] | None = None) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def drop_namespace(r: redis.Redis, namespace: str) -> None:
    """A bench's namespace is its own (random): leave nothing of it behind once its figures are taken."""
    keys = list(r.scan_iter(match=f"{namespace}:*", count=1000))
    for i in range(0, len(keys), 1000):
        r.unlink(*keys[i:i + 1000])


def measure(name: str, base_url: str, key: str, model: str, opts: argparse.Namespace) -> dict[str, LoadStats]:
    results = {}
    for mode, stream, total in (("non-stream", False, opts.requests), ("stream", True, opts.stream_requests)):
        asyncio.run(run_load(base_url, key, model, concurrency=opts.concurrency, total=opts.warmup, stream=stream))
        stats = asyncio.run(run_load(base_url, key, model, concurrency=opts.concurrency, total=total, stream=stream))
        print(f"  {name:<22} {mode:<10} {stats.summary()}", flush=True)
        results[mode] = stats
    return results


def litellm(opts: argparse.Namespace, upstream_url: str, workers: int, tmp: Path) -> dict[str, LoadStats] | None:
    binary = Path(opts.litellm_bin)
    if not binary.exists():
        print(f"  (LiteLLM not installed at {binary}: skipped)")
        return None
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: fake-model\n    litellm_params: {model: openai/fake-model, "
        f"api_base: '{upstream_url}', api_key: fake}}\n"
        "litellm_settings: {telemetry: false, drop_params: true, set_verbose: false, turn_off_message_logging: true}\n"
        f"general_settings: {{master_key: {LITELLM_KEY}, disable_spend_logs: true, disable_error_logs: true}}\n"
    )
    port = free_port()
    # LITELLM_LOCAL_MODEL_COST_MAP: don't wait on fetching prices from GitHub at start.
    proc = start([str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                  "--num_workers", str(workers)], tmp / f"litellm-{workers}.log",
                 env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}, cwd=tmp)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, 120, {"authorization": f"Bearer {LITELLM_KEY}"})
        return measure(f"LiteLLM ({workers} worker{'s' if workers > 1 else ''})",
                       f"http://127.0.0.1:{port}/v1", LITELLM_KEY, "fake-model", opts)
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4000, help="non-stream requests per target")
    parser.add_argument("--stream-requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per upstream stream")
    parser.add_argument("--api-workers", type=int, default=1, help="broker API processes")
    parser.add_argument("--worker-procs", type=int, default=1, help="broker worker processes")
    parser.add_argument("--litellm-bin", default=os.environ.get("LITELLM_BIN", "/opt/litellm-venv/bin/litellm"))
    parser.add_argument("--litellm-workers", type=int, nargs="*", default=[1])
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-bench-"))
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    upstream_port, api_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    (tmp / "broker.yaml").write_text(
        f"redis_url: {redis_url}\nnamespace: {namespace}\n"
        f"providers:\n  up: {{kind: openai, base_url: '{upstream_url}', api_key: fake, concurrency: 256}}\n"
        "models:\n  fake-model: [{provider: up, model: fake-model}]\n"
        # Limits high enough never to bite, so every request pays for the rate-limit round trip.
        f"tenants:\n  bench: {{keys: ['{hash_key(BROKER_KEY)}'], rpm: 100000000, tpm: 100000000000, "
        "max_concurrent: 100000}\n"
    )
    r = redis.Redis.from_url(redis_url)
    memory_before = r.info("memory")["used_memory"]
    print(f"fake upstream :{upstream_port} ({opts.chunks} chunks/stream), broker API :{api_port} "
          f"({opts.api_workers} proc, {opts.worker_procs} worker proc), c={opts.concurrency}, logs in {tmp}")

    procs = [start([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(upstream_port),
                    "--chunks", str(opts.chunks)], tmp / "upstream.log")]
    try:
        wait_ready(f"{upstream_url}/models", procs[0], 30)
        procs += [start([sys.executable, "-m", "broker.cli", "worker", "--config", str(tmp / "broker.yaml"),
                         "--provider", "up", "--log-level", "warning"], tmp / f"worker-{i}.log")
                  for i in range(opts.worker_procs)]
        procs.append(start([sys.executable, "-m", "broker.cli", "api", "--config", str(tmp / "broker.yaml"),
                            "--host", "127.0.0.1", "--port", str(api_port), "--workers", str(opts.api_workers),
                            "--log-level", "warning"], tmp / "api.log"))
        wait_ready(f"http://127.0.0.1:{api_port}/v1/models", procs[-1], 60)

        direct = measure("upstream direct", upstream_url, "fake", "fake-model", opts)
        broker = measure("llm-broker", f"http://127.0.0.1:{api_port}/v1", BROKER_KEY, "fake-model", opts)
        memory_after = r.info("memory")["used_memory"]
        leftover = sum(1 for _ in r.scan_iter(match=f"{namespace}:*", count=1000))
        for proc in procs[1:]:
            stop(proc)
        theirs = {w: litellm(opts, upstream_url, w, tmp) for w in opts.litellm_workers}
    finally:
        for proc in procs:
            stop(proc)
        drop_namespace(r, namespace)

    print("\nsummary (c=%d)" % opts.concurrency)
    for mode in ("non-stream", "stream"):
        b, d = broker[mode], direct[mode]
        line = (f"  {mode:<10} broker {b.throughput_rps:7.1f} req/s vs upstream alone {d.throughput_rps:7.1f}; "
                f"added latency p50 {b.latency_p50_ms - d.latency_p50_ms:+.1f} ms, p99 {b.latency_p99_ms - d.latency_p99_ms:+.1f} ms")
        if mode == "stream":
            line += f"; TTFT p50 {b.ttft_p50_ms:.1f} ms (upstream {d.ttft_p50_ms:.1f}), p99 {b.ttft_p99_ms:.1f} ms"
        print(line)
        for workers, stats in theirs.items():
            if stats:
                s = stats[mode]
                print(f"  {'':<10} LiteLLM ({workers}w) {s.throughput_rps:7.1f} req/s -> broker is "
                      f"{b.throughput_rps / s.throughput_rps:.1f}x")
    print(f"  Redis used_memory {memory_before / 1e6:.2f} MB before, {memory_after / 1e6:.2f} MB after; "
          f"{leftover} keys left in the broker's namespace (results expire after their TTL)")


if __name__ == "__main__":
    main()
