"""What the operator console's rollups cost a plain request: two brokers over one fake upstream, one
without an `admin` section (nothing is written) and one with it (`admin.rollups` on, the default),
loaded in alternating rounds; CPU per request of each one's API, worker and redis-server (/proc), and
throughput. Alternating rounds put a neighbour's load or a drift on both alike.

    python -m bench.console_cost                 # 6 rounds of 2,000 non-stream requests at c=64
    python -m bench.console_cost --stream --rounds 4
    python -m bench.console_cost --same          # both without: the spread of the measurement itself

Issue 26 asks for a cost within noise; see README ("The operator console") for the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen
from bench.compare import BROKER_KEY
from bench.probes import tree_cpu_s
from bench.procs import start, stop, wait_ready
from broker.cli.embedded_redis import free_port
from broker.config import hash_key

ROLES = ("worker", "api", "redis")


def _config(redis_port: int, upstream_port: int, namespace: str, admin: bool) -> str:
    return (f"redis_url: redis://127.0.0.1:{redis_port}/0\nnamespace: {namespace}\n"
            f"providers:\n  up: {{kind: openai, base_url: 'http://127.0.0.1:{upstream_port}/v1', api_key: fake, "
            "concurrency: 256}\n"
            "models:\n  fake-model: [{provider: up, model: fake-model}]\n"
            # Limits high enough never to bite, as bench.compare's: every request pays the admission round trip.
            f"tenants:\n  bench: {{keys: ['{hash_key(BROKER_KEY)}'], rpm: 100000000, tpm: 100000000000, "
            "max_concurrent: 100000}\n"
            + (f"admin: {{keys: ['{hash_key('sk-bench-admin-0001')}']}}\n" if admin else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=2000, help="per round and broker")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--same", action="store_true",
                        help="both brokers without the console: what this measurement reads when nothing differs")
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-console-cost-"))
    upstream_port = free_port()
    procs = [start([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(upstream_port),
                    "--chunks", "20"], tmp / "upstream.log")]
    redis_servers: list[subprocess.Popen[bytes]] = []
    brokers: dict[str, tuple[str, list[int]]] = {}  # name → (base URL, pids of worker, api, redis)
    try:
        wait_ready(f"http://127.0.0.1:{upstream_port}/v1/models", procs[0], 30)
        for name, admin in (("off", False), ("on", not opts.same)):
            redis_port, api_port = free_port(), free_port()
            redis_servers.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                                                   "--appendonly", "no"], stdout=subprocess.DEVNULL))
            config = tmp / f"{name}.yaml"
            config.write_text(_config(redis_port, upstream_port, f"cc-{name}", admin))
            time.sleep(0.3)
            worker = start([sys.executable, "-m", "broker.cli", "worker", "--config", str(config), "--provider", "up",
                            "--log-level", "warning"], tmp / f"worker-{name}.log")
            api = start([sys.executable, "-m", "broker.cli", "api", "--config", str(config), "--host", "127.0.0.1",
                         "--port", str(api_port), "--log-level", "warning"], tmp / f"api-{name}.log")
            procs += [worker, api]
            base_url = f"http://127.0.0.1:{api_port}/v1"
            wait_ready(f"{base_url}/models", api, 60, {"authorization": f"Bearer {BROKER_KEY}"})
            brokers[name] = (base_url, [worker.pid, api.pid, redis_servers[-1].pid])
        time.sleep(1.0)  # the workers' first heartbeats

        def load(base_url: str, total: int) -> loadgen.LoadStats:
            return asyncio.run(loadgen.run_load(base_url, BROKER_KEY, "fake-model", concurrency=opts.concurrency,
                                                total=total, stream=opts.stream))

        for base_url, _ in brokers.values():
            load(base_url, 300)  # warm-up
        cpu: dict[str, list[list[float]]] = {name: [] for name in brokers}
        rates: dict[str, list[float]] = {name: [] for name in brokers}
        for round_ in range(opts.rounds):
            for name in (("off", "on") if round_ % 2 == 0 else ("on", "off")):
                base_url, pids = brokers[name]
                before = [tree_cpu_s(pid) for pid in pids]
                stats = load(base_url, opts.requests)
                cpu[name].append([(tree_cpu_s(pid) - b) * 1000 / stats.requests for pid, b in zip(pids, before)])
                rates[name].append(stats.throughput_rps)
            print(f"round {round_ + 1}: " + "   ".join(
                f"{name} {rates[name][-1]:.0f} req/s {sum(cpu[name][-1]):.3f} ms" for name in brokers), flush=True)
        mean = {name: [sum(r[i] for r in cpu[name]) / len(cpu[name]) for i in range(len(ROLES))] for name in brokers}
        for name in brokers:
            parts = ", ".join(f"{role} {ms:.3f}" for role, ms in zip(ROLES, mean[name]))
            print(f"rollups {name:>3}: {sum(rates[name]) / len(rates[name]):.0f} req/s, "
                  f"{sum(mean[name]):.3f} ms CPU/request ({parts})")
        print(f"CPU per request, on / off: x{sum(mean['on']) / sum(mean['off']):.3f}")
    finally:
        for proc in procs:
            stop(proc)
        for server in redis_servers:
            server.terminate()


if __name__ == "__main__":
    main()
