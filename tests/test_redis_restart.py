"""API and workers ride out a Redis restart (their own redis-server: this test kills it)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from broker.embedded_redis import free_port
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)], stdout=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < end
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def test_requests_work_again_after_redis_restarts(stack_factory: Any, own_redis: RedisServer) -> None:
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]},
                          redis_url=own_redis.url, queue={"heartbeat_interval_s": 0.3, "claim_idle_s": 1.0})
    worker = stack.worker("mock")
    base_url = stack.api()
    body = {"model": "m", "messages": [{"role": "user", "content": "still there?"}]}
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    assert httpx.post(f"{base_url}/chat/completions", json=body, headers=headers).status_code == 200

    own_redis.kill()
    during = httpx.post(f"{base_url}/chat/completions", json=body, headers=headers, timeout=10)
    assert during.status_code == 503 and during.json()["error"]["type"]  # a clear error, not a hang or a 500
    own_redis.start()  # same port, empty: no jobs, no scripts, no worker registrations

    deadline = time.monotonic() + 15
    while True:
        after = httpx.post(f"{base_url}/chat/completions", json=body, headers=headers, timeout=10)
        if after.status_code == 200:
            break
        assert after.status_code == 503, after.text  # until the worker's next heartbeat registers it
        assert time.monotonic() < deadline, after.text
        time.sleep(0.2)
    assert worker.popen.poll() is None  # the worker rode it out
    stream = httpx.post(f"{base_url}/chat/completions", json={**body, "stream": True}, headers=headers)
    assert stream.text.endswith("data: [DONE]\n\n")
