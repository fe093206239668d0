"""Hosts apart (issue 24, "Past one machine"): Redis, the API, the worker and the storage each in a
network namespace of their own, joined by a bridge, as `python -m bench.chaos --hosts-apart` runs them
(bench/hosts.py, bench/chaos.py's `running`). A chat answer and a batch through the official `openai`
SDK prove that no path between the roles needs loopback or a shared directory: every role has its own
directory and config copy, the file store is S3 (moto's server on the storage host), and 127.0.0.1 in
any namespace reaches only that namespace's own `lo`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from bench.chaos import Layout, running
from bench.compare import BROKER_KEY
from bench.hosts import PREFIX, Network, NotRoot, namespaces, require_root

MISSING = [tool for tool in ("ip", "redis-server", "redis-sentinel") if shutil.which(tool) is None]
if not (Path(sys.executable).parent / "moto_server").exists():
    MISSING.append("moto_server")

if os.geteuid() != 0:
    WHY = "network namespaces need root (ip netns add, veth pairs, a bridge)"
else:
    WHY = "hosts apart needs " + ", ".join(MISSING)
apart = pytest.mark.skipif(os.geteuid() != 0 or bool(MISSING), reason=WHY)

LINES = 4


@apart
def test_a_chat_and_a_batch_cross_hosts(tmp_path: Path) -> None:
    started = time.monotonic()
    names = ["redis", "api", "worker", "storage"]
    with Network(names, tmp_path / "hosts") as net:
        h = net.hosts
        assert len({host.ip for host in h.values()}) == len(names)
        layout = Layout((h["redis"], h["redis"]), (h["redis"], h["redis"], h["redis"]), h["storage"], h["storage"],
                        (h["api"],), (("a", h["worker"]),), h["worker"])
        with running(tmp_path / "client", f"apart-{secrets.token_hex(4)}", layout) as system:
            broker_roles = [*system.apis, *system.workers, *[r for r in system.others if r.name == "batch-worker"]]
            assert len(broker_roles) == 3
            for role in broker_roles:
                config = (role.directory / "broker.yaml").read_text()
                assert "127.0.0.1" not in config and "localhost" not in config, role.name
            client = openai.OpenAI(base_url=system.api_urls()[0], api_key=BROKER_KEY, max_retries=0, timeout=20)

            chat = client.chat.completions.create(model="chat", max_tokens=8,
                                                  messages=[{"role": "user", "content": "across hosts"}])
            assert chat.choices[0].finish_reason == "length" and chat.choices[0].message.content  # max_tokens 8
            stats = httpx.get(f"{system.upstreams['a']}/v1/fake/stats").json()
            assert stats["chat_calls"] >= 1  # the worker's host called the storage host's upstream

            lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": f"b {i}"}]}}
                     for i in range(LINES)]
            uploaded = client.files.create(file=("in.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()),
                                           purpose="batch")
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            end = time.monotonic() + 20
            while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < end:
                time.sleep(0.3)
                batch = client.batches.retrieve(batch.id)
            assert batch.status == "completed", batch
            assert batch.output_file_id is not None
            output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
            assert sorted(x["custom_id"] for x in output) == [f"line-{i}" for i in range(LINES)]
            assert all(x["response"]["status_code"] == 200 for x in output)
            # The bodies are in the bucket on the storage host, not in any role's directory.
            assert system.s3 is not None
            stored = system.s3.keys("chaos")
            assert {uploaded.id, batch.output_file_id} <= set(stored)
            for role in system.procs():
                assert not list(role.directory.glob("**/file-*")), role.name

            # 127.0.0.1 on the API's host is that host's own lo: Redis is not there.
            primary_port = system.redis.primary_address().rsplit(":", 1)[1]
            probe = subprocess.run(h["api"].cmd([sys.executable, "-c", _CONNECT, primary_port]), capture_output=True,
                                   text=True, timeout=10)
            assert probe.stdout.strip() == "ConnectionRefusedError", probe
    assert net.left() == []
    assert not [name for name in namespaces() if name.startswith(f"{PREFIX}{os.getpid()}-")]
    assert time.monotonic() - started < 30


_CONNECT = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


def test_refuses_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NotRoot, match="needs root"):
        require_root()
