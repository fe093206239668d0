"""`llm-broker dev` on a machine with no Redis configured: embedded Redis, answers the SDK, stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from broker.embedded_redis import free_port

REPO = Path(__file__).resolve().parent.parent


def run_dev(tmp_path: Path, path_env: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LLM_BROKER_CONFIG")}
    env["PATH"] = path_env
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "broker.cli", "dev", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        try:
            deadline = time.monotonic() + 30
            while "llm-broker dev is up" not in log_path.read_text():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            banner = log_path.read_text()
            assert f"http://127.0.0.1:{port}/v1" in banner and "sk-dev" in banner

            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-dev", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="mock-chat", messages=[{"role": "user", "content": "hi"}])
            # The dev tenant's limits are generous but real: the bucket counted this request.
            assert raw.headers["x-ratelimit-limit-requests"] == "100000"
            assert raw.headers["x-ratelimit-remaining-requests"] == "99999"
            answer = raw.parse()
            assert answer.choices[0].message.content
            streamed = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(
                    model="mock-chat", stream=True, messages=[{"role": "user", "content": "hi"}]
                ) if c.choices
            )
            assert streamed == answer.choices[0].message.content
            assert {m.id for m in client.models.list()} >= {"mock-chat"}

            proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert proc.wait(20) == 0, log_path.read_text()
            assert "llm-broker dev stopped." in log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return None


def test_dev_starts_a_redis_server_from_path_and_answers(tmp_path: Path) -> None:
    if not any((Path(d) / "redis-server").exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("redis-server is not installed")
    run_dev(tmp_path, os.environ["PATH"])
    assert "embedded redis-server" in (tmp_path / "dev.log").read_text()


def test_dev_falls_back_to_fakeredis_without_redis_server(tmp_path: Path) -> None:
    # Only the Python interpreter's directory on PATH: no redis-server to find.
    run_dev(tmp_path, str(Path(sys.executable).parent))
    assert "fakeredis" in (tmp_path / "dev.log").read_text()
