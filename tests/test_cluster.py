"""The broker on a real Redis Cluster: three masters of its own (redis-server --cluster-enabled yes on
free ports, joined by `redis-cli --cluster create`), reached through a `redis+cluster://` URL.

Chat, streams, rate limits, budgets, the ledger, keys made at run time and the reclaim of a dead
worker's jobs all run on it; every script's keys share one slot, or the cluster would answer
CROSSSLOT (the client checks it before sending, too).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from broker.cli.embedded_redis import free_port
from broker.config import hash_key
from broker.keys import Keys
from tests.harness import TEST_KEY, RedisServer, sse_data, sync_client
from tests.stacks import Stack, StackFactory

pytestmark = pytest.mark.skipif(not (shutil.which("redis-server") and shutil.which("redis-cli")),
                                reason="needs redis-server and redis-cli")

ADMIN_KEY = "sk-admin-cluster-0001"
LIMITED_KEY = "sk-limited-cluster-0001"
POOR_KEY = "sk-poor-cluster-0001"
HEADERS = {"authorization": f"Bearer {TEST_KEY}"}
FAST_RECLAIM = {"heartbeat_interval_s": 0.3, "claim_idle_s": 1.0, "drain_timeout_s": 10}
BUS_OFFSET = 10_000  # a cluster node talks to the others on its port + 10000
PRICED = {"input_per_mtok": 1_000_000.0, "output_per_mtok": 1_000_000.0}  # a dollar a token


class Cluster:
    """Three masters, no replicas: every slot is served, by three processes."""

    def __init__(self, directory: Path) -> None:
        self.ports = [node_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for port in self.ports:
            node_dir = directory / str(port)
            node_dir.mkdir()
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000", "--save", "",
                 "--appendonly", "no", "--dir", str(node_dir)], stdout=subprocess.DEVNULL))
        for port in self.ports:
            wait_until(lambda: self.node(port).ping(), 10)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        wait_until(lambda: all(self.node(p).execute_command("CLUSTER INFO")["cluster_state"] == "ok"
                               for p in self.ports), 20)
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])  # any nodes will do

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def keys_per_node(self) -> list[int]:
        return [self.node(p).dbsize() for p in self.ports]

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def node_port() -> int:
    """A free port whose cluster bus port (10000 above it) is free too, and a port."""
    while True:
        port = free_port()
        if port + BUS_OFFSET < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + BUS_OFFSET))
                except OSError:
                    continue
            return port


def wait_until(check: Any, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except redis.ConnectionError:
            pass
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("cluster"))
    yield made
    made.stop()


@pytest.fixture(scope="module")
def stack(cluster: Cluster, module_stack_factory: StackFactory) -> Stack:
    stack = module_stack_factory(
        {"mock": {"kind": "mock", "tokens": 5}},
        {"m": [{"provider": "mock", "model": "m"}], "pm": [{"provider": "mock", "model": "pm", **PRICED}]},
        redis_url=cluster.url, admin={"keys": [hash_key(ADMIN_KEY)]}, cache={"ttl_s": 60},
        tenants={"test": {"keys": [hash_key(TEST_KEY)]},
                 "limited": {"keys": [hash_key(LIMITED_KEY)], "rpm": 3, "daily_budget_usd": 40},
                 "poor": {"keys": [hash_key(POOR_KEY)], "daily_budget_usd": 1}})
    stack.worker("mock")
    stack.api()
    return stack


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> str:
    return str(stack.base_url)


def sdk(base_url: str, key: str = TEST_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)


def test_chat_streams_and_the_ledger_work_on_a_cluster(cluster: Cluster, base_url: str) -> None:
    client = sdk(base_url)
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello cluster"}])
    assert answer.choices[0].message.content and answer.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": "hello cluster"}]) if c.choices)
    assert text == answer.choices[0].message.content  # the mock answers a prompt the same way both ways
    # Counted once each, in the tenant's slot (ledger.lua), beside its rate limits and budgets.
    usage = httpx.get(f"{base_url}/usage", headers=HEADERS).json()["total"]
    assert usage["requests"] == 2 and usage["output_tokens"] == 2 * answer.usage.completion_tokens
    assert sum(1 for n in cluster.keys_per_node() if n > 0) >= 2  # really spread over the cluster


def test_rate_limits_and_budgets_hold_on_a_cluster(cluster: Cluster, base_url: str, module_namespace: str) -> None:
    client = sdk(base_url, LIMITED_KEY)
    ask = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
    # Three pass the rpm of 3 (each holding its worst case against the $40 budget, then settled at
    # its real cost); the fourth is refused with OpenAI's error.
    spent = sum(client.chat.completions.create(model="pm", **ask).usage.cost  # type: ignore[call-overload,union-attr]
                for _ in range(3))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="pm", **ask)  # type: ignore[call-overload]
    assert info.value.code == "rate_limit_exceeded" and info.value.response.headers["retry-after"]
    usage = httpx.get(f"{base_url}/usage", headers={"authorization": f"Bearer {LIMITED_KEY}"}).json()["total"]
    assert usage["requests"] == 3 and usage["cost_usd"] == pytest.approx(spent) and spent > 0
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    counter = sync_client(cluster.url).get(Keys(module_namespace).budget("limited", "t", f"d:{today}"))
    assert int(counter) == round(spent * 1e9)  # the holds replaced by the real costs, nothing left held
    # A budget too small for any request's worst case: refused at admission, in the same step.
    with pytest.raises(openai.RateLimitError) as poor:
        sdk(base_url, POOR_KEY).chat.completions.create(model="pm", **ask)  # type: ignore[call-overload]
    assert poor.value.code == "insufficient_quota"


def test_async_jobs_resumed_streams_the_cache_and_readiness_work_on_a_cluster(base_url: str) -> None:
    root = base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/readyz").status_code == 200  # scripts on every primary, a live worker
    http = httpx.Client(base_url=base_url, headers=HEADERS, timeout=30)
    body = {"model": "m", "messages": [{"role": "user", "content": "later"}]}
    queued = http.post("/chat/completions", json=body, headers={"prefer": "respond-async"})
    assert queued.status_code == 202, queued.text
    end = time.monotonic() + 10
    while (job := http.get(f"/jobs/{queued.json()['id']}").json())["status"] != "completed":
        assert time.monotonic() < end, job
        time.sleep(0.05)
    assert job["response"]["choices"][0]["message"]["content"]
    # A stream read again from its event log, after its first two events.
    with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as resp:
        request_id = resp.headers["x-request-id"]
        whole = [line for line in resp.iter_lines() if line.startswith(("id:", "data:"))]
    rest = http.get(f"/jobs/{request_id}/events", headers={"last-event-id": "1.1"})
    assert rest.status_code == 200
    assert [line for line in rest.text.splitlines() if line.startswith(("id:", "data:"))] == whole[4:]
    # The response cache ({cache} slot): the second identical deterministic request is a hit.
    ask = {**body, "temperature": 0}
    assert http.post("/chat/completions", json=ask).headers["x-llm-broker-cache"] == "miss"
    assert http.post("/chat/completions", json=ask).headers["x-llm-broker-cache"] == "hit"


def test_a_key_made_at_run_time_works_and_is_revoked_on_a_cluster(base_url: str) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    root = base_url.removesuffix("/v1")
    made = httpx.post(f"{root}/admin/keys", json={"tenant": "test", "name": "on-cluster"}, headers=admin)
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert sdk(base_url, key).models.list()
    assert httpx.delete(f"{root}/admin/keys/{made.json()['id']}", headers=admin).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        sdk(base_url, key).models.list()


def test_a_dead_workers_jobs_are_reclaimed_on_a_cluster(cluster: Cluster, stack_factory: StackFactory) -> None:
    stack = stack_factory({"slow": {"kind": "mock", "tokens": 4, "first_token_delay_s": 1.5}},
                          {"s": [{"provider": "slow", "model": "s"}]}, redis_url=cluster.url, queue=FAST_RECLAIM)
    doomed = stack.worker("slow", "--concurrency", "20")
    url = stack.api()

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60) as http:
            asks = [asyncio.ensure_future(http.post("/chat/completions", json={
                "model": "s", "stream": i % 2 == 0, "messages": [{"role": "user", "content": f"crash {i}"}]}))
                for i in range(10)]
            await asyncio.sleep(0.7)  # all ten are running on the doomed worker
            doomed.kill()
            stack.worker("slow", "--concurrency", "20")  # the survivor reclaims them
            return await asyncio.gather(*asks)

    responses = asyncio.run(main())
    for i, resp in enumerate(responses):
        assert resp.status_code == 200, (i, resp.text)
        if i % 2 == 0:
            events = sse_data(resp.text)
            assert events[-1] == "[DONE]" and not any('"error"' in e for e in events), i
        else:
            assert resp.json()["choices"][0]["message"]["content"], i
    end = time.monotonic() + 5  # each job counted once, though delivered twice
    while (total := httpx.get(f"{url}/usage", headers=HEADERS).json()["total"])["requests"] < 10:
        assert time.monotonic() < end, total
        time.sleep(0.05)
    time.sleep(0.3)  # a late double count would land now
    assert httpx.get(f"{url}/usage", headers=HEADERS).json()["total"]["requests"] == 10


def test_batches_run_on_a_cluster_with_arqs_queue_on_a_redis_of_its_own(
    cluster: Cluster, base_url: str, stack_factory: StackFactory, own_redis: RedisServer
) -> None:
    lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "m", "messages": [{"role": "user", "content": f"say {i}"}]}} for i in range(20)]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    # arq speaks to one Redis: without batches.queue_url a cluster broker says so, before making a batch.
    uploaded = sdk(base_url).files.create(file=("in.jsonl", data), purpose="batch")
    with pytest.raises(openai.InternalServerError) as refused:
        sdk(base_url).batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")
    assert refused.value.code == "batches_unavailable" and "queue_url" in refused.value.message

    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]},
                          redis_url=cluster.url, batches={"queue_url": own_redis.url, "max_in_flight": 8})
    stack.worker("mock")
    client = sdk(stack.api())
    stack.batch_worker()
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    end = time.monotonic() + 60
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < end, batch
        time.sleep(0.2)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (20, 0)
    assert batch.output_file_id is not None
    output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in output) == sorted(f"line-{i}" for i in range(20))
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert own_redis_keys(own_redis)  # arq's queue is there, and nothing of the broker's
    assert [f.id for f in client.files.list()]  # files list reads its records across the cluster's nodes


def own_redis_keys(server: RedisServer) -> list[str]:
    found = [k.decode() for k in redis.Redis.from_url(server.url).keys("*")]
    assert not [k for k in found if ":batch:" in k or ":file:" in k], found
    return found


@pytest.mark.parametrize(("command", "shows"), [(["status"], "mock"), (["queues"], ""), (["batches", "--json"], ""),
                                               (["usage", "--tenant", "test"], "requests"), (["dead", "list"], ""),
                                               (["keys", "list"], "limited")])
def test_the_operators_commands_read_a_cluster(stack: Stack, base_url: str, command: list[str], shows: str) -> None:
    sdk(base_url).chat.completions.create(model="m", messages=[{"role": "user", "content": "for the record"}])
    done = subprocess.run([sys.executable, "-m", "broker.cli", *command, "--config", str(stack.config_path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert shows in done.stdout, done.stdout
