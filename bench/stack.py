"""A broker over fake upstreams, as the scenario benchmarks run it: one fake OpenAI server per
provider, a worker per provider and one API process, all real processes on real ports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.compare import BROKER_KEY
from bench.procs import start, wait_ready


def broker_over_fakes(tmp: Path, config: str, upstreams: dict[str, int], api_port: int,
                      procs: list[subprocess.Popen[bytes]]) -> str:
    """Start it all (into `procs`, which the caller stops whatever happens); returns the API's base URL.
    `config` is the broker's YAML; `upstreams` maps each provider to its fake's port."""
    (tmp / "broker.yaml").write_text(config)
    fakes = {name: start([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(port), "--chunks", "20"],
                         tmp / f"upstream-{name}.log") for name, port in upstreams.items()}
    procs += fakes.values()
    for name, proc in fakes.items():
        wait_ready(f"http://127.0.0.1:{upstreams[name]}/v1/models", proc, 30)
    path = str(tmp / "broker.yaml")
    procs += [start([sys.executable, "-m", "broker.cli", "worker", "--config", path, "--provider", name,
                     "--log-level", "error"], tmp / f"worker-{name}.log") for name in upstreams]
    procs.append(start([sys.executable, "-m", "broker.cli", "api", "--config", path, "--host", "127.0.0.1",
                        "--port", str(api_port), "--log-level", "warning"], tmp / "api.log"))
    base_url = f"http://127.0.0.1:{api_port}/v1"
    wait_ready(f"{base_url}/models", procs[-1], 60, {"authorization": f"Bearer {BROKER_KEY}"})
    return base_url
