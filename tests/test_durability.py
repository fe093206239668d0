"""`redis.durability: replicated` (broker/queue/durability.py) on a primary and a replica of the test's
own: the writes a client is told of wait for the replica (Redis WAIT, counted in the primary's
INFO commandstats), a stopped replica turns an enqueue into a prompt 503 `not_replicated` (529 on
/v1/messages) rather than an "accepted" the next failover could take back, and the default sends no
WAIT at all."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import redis

from broker.keys import Keys
from tests.harness import TEST_KEY, RedisServer
from tests.stacks import Stack, StackFactory

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")

WAIT_MS = 150
ASYNC = {"Prefer": "respond-async"}
# The mock answers in 3 tokens; the slow one takes 0.4 s for each (a job that runs while the replica stops).
PROVIDERS = {"mock": {"kind": "mock", "tokens": 3}, "mock-slow": {"kind": "mock", "tokens": 3, "token_delay_s": 0.4}}
MODELS = {"m": [{"provider": "mock", "model": "m"}], "slow": [{"provider": "mock-slow", "model": "slow"}]}
ASK = [{"role": "user", "content": "kept?"}]


@pytest.fixture
def primary(own_redis: RedisServer) -> RedisServer:
    return own_redis  # a Redis of the test's own (tests/conftest.py), which the replica follows


@pytest.fixture
def replica(tmp_path: Path, primary: RedisServer) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, replica_of=primary)
    server.start()
    yield server
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGCONT)  # a test may have stopped it
    server.kill()


def waits(server: RedisServer) -> int:
    """WAIT commands the server has run (INFO commandstats)."""
    stats = redis.Redis.from_url(server.url).info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=TEST_KEY, max_retries=0)


def test_replicated_writes_wait_for_the_replica_and_a_missing_replica_refuses_the_enqueue(
        stack_factory: StackFactory, primary: RedisServer, replica: RedisServer, namespace: str) -> None:
    stack = stack_factory(PROVIDERS, MODELS, redis_url=primary.url,
                          redis={"durability": "replicated", "replicas": 1, "wait_timeout_ms": WAIT_MS})
    stack.up("mock", "mock-slow")
    client = sdk(stack)

    before = waits(primary)
    answer = client.chat.completions.create(model="m", messages=ASK)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    assert waits(primary) >= before + 2  # the enqueue's and the end's (and the ledger flush's after it)

    # As on a replica just promoted (SCRIPT LOAD is not replicated): every script unknown. The enqueue's and
    # the end's are loaded and sent again in a pipeline with a WAIT of its own (durability.py).
    redis.Redis.from_url(primary.url).script_flush()
    before = waits(primary)
    assert client.chat.completions.create(model="m", messages=ASK).choices[0].message.content  # type: ignore[arg-type]
    # Each of the two still WAITs after its writes; how many reloads that took depends on which script
    # a ledger flush of the request before had already reloaded, so count no more than one each.
    assert waits(primary) >= before + 2

    before = waits(primary)
    accepted = client.chat.completions.with_raw_response.create(
        model="m", messages=ASK, extra_headers=ASYNC)  # type: ignore[arg-type]
    assert accepted.http_response.status_code == 202
    job_id = accepted.http_response.json()["id"]
    assert waits(primary) >= before + 1  # the 202 came after the enqueue's WAIT
    store = redis.Redis.from_url(replica.url)
    assert store.hexists(Keys(namespace).job(job_id), "r")  # its record is on the replica already

    # A job that runs while the replica stops: its answer still comes, counted as a shortfall by its worker.
    slow: list[str | None] = []
    running = threading.Thread(target=lambda: slow.append(client.chat.completions.create(
        model="slow", messages=ASK).choices[0].message.content))  # type: ignore[arg-type]
    running.start()
    time.sleep(0.3)  # enqueued (and WAITed for) by now; the worker is still streaming its tokens
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)

    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="m", messages=ASK)  # type: ignore[arg-type]
    took = time.monotonic() - started
    assert refused.value.status_code == 503 and took < 2.0, took  # WAIT's 150 ms, not a hang
    error = refused.value.body
    assert isinstance(error, dict) and error["type"] == "service_unavailable_error"
    assert error["code"] == "not_replicated"
    assert refused.value.response.headers["retry-after"] == "1"

    with pytest.raises(openai.APIStatusError) as async_refused:
        client.chat.completions.create(model="m", messages=ASK, extra_headers=ASYNC)  # type: ignore[arg-type]
    assert async_refused.value.status_code == 503
    refused_id = async_refused.value.response.headers["x-request-id"].removeprefix("req_")
    live = redis.Redis.from_url(primary.url)
    deadline = time.monotonic() + 2
    # The withdrawn job's record goes (api/dispatch.py). A worker that had already pulled the job may
    # still flag it started (a bare hash under the record's expiry): the record itself never returns.
    while live.hexists(Keys(namespace).job(refused_id), "r"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    gone = httpx.get(f"{stack.base_url}/jobs/{refused_id}", headers={"authorization": f"Bearer {TEST_KEY}"})
    assert gone.status_code == 404, gone.text  # its client was told 503: no job to find

    messages = anthropic.Anthropic(base_url=stack.base_url.removesuffix("/v1"), api_key=TEST_KEY, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        messages.messages.create(model="m", max_tokens=16, messages=[{"role": "user", "content": "kept?"}])
    assert overloaded.value.status_code == 529  # Anthropic's "busy", which its SDK retries
    assert isinstance(overloaded.value.body, dict) and overloaded.value.body["error"]["type"] == "overloaded_error"

    running.join(10)
    assert slow and slow[0]  # published though the replica never acknowledged its end
    worker_log = next(p for p in stack.workers if "mock-slow" in p.args).output()
    assert "1 job end(s) published" in worker_log and "with 0 of 1 Redis replicas" in worker_log


def test_the_default_sends_no_wait(stack_factory: StackFactory, primary: RedisServer, replica: RedisServer) -> None:
    stack = stack_factory(PROVIDERS, MODELS, redis_url=primary.url)
    stack.up("mock")
    before = waits(primary)
    client = sdk(stack)
    assert client.chat.completions.create(model="m", messages=ASK).choices[0].message.content  # type: ignore[arg-type]
    accepted = client.chat.completions.with_raw_response.create(
        model="m", messages=ASK, extra_headers=ASYNC)  # type: ignore[arg-type]
    assert accepted.http_response.status_code == 202
    assert waits(primary) == before
