"""API and workers ride out a Redis restart (their own redis-server: this test kills it)."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from broker.config import hash_key
from tests.fakes import openai_upstream
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import TEST_KEY, RedisServer, sse_data
from tests.stacks import StackFactory

pytestmark = [pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server"),
              pytest.mark.upstream(chunks=4)]


def sent_upstream(upstream: UpstreamServer, marker: str) -> int:
    return sum(1 for r in upstream.requests if r.body and marker in str(r.body.get("messages")))


def chat(model: str, marker: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": marker}]}


def test_requests_work_again_after_redis_restarts(stack_factory: StackFactory, own_redis: RedisServer) -> None:
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]},
                          redis_url=own_redis.url, queue={"heartbeat_interval_s": 0.3, "claim_idle_s": 1.0})
    base_url = stack.up("mock")
    worker = stack.workers[0]
    body = {"model": "m", "messages": [{"role": "user", "content": "still there?"}]}
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    assert httpx.post(f"{base_url}/chat/completions", json=body, headers=headers).status_code == 200

    own_redis.kill()
    during = httpx.post(f"{base_url}/chat/completions", json=body, headers=headers, timeout=10)
    assert during.status_code == 503 and during.json()["error"]["type"]  # a clear error, not a hang or a 500
    assert "answering 503: ConnectionError" in stack.procs[-1].output()  # and the operator sees why
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


ADMIN_KEY = "sk-admin-redis-down-0001"
UNLIMITED_KEY = "sk-unlimited-redis-down-0001"
# What each route answers while Redis is down (api/unavailable.py): the route, the key, what it names.
DOWN_ANSWERS = [
    ("POST", "/v1/chat/completions", TEST_KEY, "The broker's rate limiter"),  # admission is its first step
    ("POST", "/v1/chat/completions", UNLIMITED_KEY, "The broker's queue"),  # without limits, queueing is
    ("GET", "/v1/files", TEST_KEY, "The broker's file store"),
    ("GET", "/v1/files/file-0123456789abcdef", TEST_KEY, "The broker's file store"),
    ("GET", "/v1/batches", TEST_KEY, "The broker's batch store"),
    ("GET", f"/v1/jobs/{'0' * 32}", TEST_KEY, "The broker's job store"),
    ("GET", f"/v1/jobs/{'0' * 32}/events", TEST_KEY, "The broker's job store"),
    ("GET", "/v1/usage", TEST_KEY, "The usage ledger"),
    ("GET", "/admin/keys", ADMIN_KEY, "The broker's key store (Redis)"),
]


def test_every_route_answers_a_retryable_openai_503_while_redis_is_down(stack_factory: Any,
                                                                         own_redis: RedisServer) -> None:
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]},
                          redis_url=own_redis.url, admin={"keys": [hash_key(ADMIN_KEY)]},
                          tenants={"test": {"keys": [hash_key(TEST_KEY)], "rpm": 1000},
                                   "free": {"keys": [hash_key(UNLIMITED_KEY)]}})
    root = stack.up("mock").removesuffix("/v1")
    own_redis.kill()
    for method, path, key, what in DOWN_ANSWERS:
        resp = httpx.request(method, root + path, headers={"authorization": f"Bearer {key}"}, timeout=10,
                             json=chat("m", "down?") if method == "POST" else None)
        assert resp.status_code == 503, (path, resp.text)
        assert resp.json() == {"error": {"message": f"{what} is unavailable; please retry shortly.",
                                         "type": "service_unavailable_error", "param": None,
                                         "code": "service_unavailable"}}, path
        assert resp.headers["retry-after"] == "1" and resp.headers["x-request-id"], path
    assert stack.procs[-1].output().count("answering 503: ConnectionError") == len(DOWN_ANSWERS)  # once each


def kill_pubsub_clients(url: str, seconds: float) -> None:
    """Break every pub/sub connection (the API's reply channel among them), again and again."""
    client = redis.Redis.from_url(url)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        time.sleep(0.03)
    client.close()


def test_answers_survive_the_reply_channel_breaking(stack_factory: StackFactory, own_redis: RedisServer) -> None:
    # Each answer takes ~1 s; the API's pub/sub connection is cut repeatedly around the time
    # the answers are published, so some replies are published while nobody listens.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 5, "first_token_delay_s": 0.8}},
                          {"m": [{"provider": "mock", "model": "m"}]}, redis_url=own_redis.url)
    base_url = stack.up("mock")
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    bodies = [{"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]} for i in range(6)]
    with ThreadPoolExecutor(8) as pool:  # the reference answers, all at once: ~1 s rather than ~6
        expected = list(pool.map(lambda body: httpx.post(f"{base_url}/chat/completions", json=body,
                                                         headers=headers, timeout=10).json(), bodies))

    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(httpx.post, f"{base_url}/chat/completions", json=body, headers=headers, timeout=20)
                   for body in bodies]
        streams = [pool.submit(httpx.post, f"{base_url}/chat/completions", json={**body, "stream": True},
                               headers=headers, timeout=20) for body in bodies[:2]]
        time.sleep(0.5)
        kill_pubsub_clients(own_redis.url, 1.0)
        for answer, reference in zip(answers, expected):
            resp = answer.result()
            # Not a 503: the lost final reply was read back from the job's result key.
            assert resp.status_code == 200, resp.text
            assert resp.json()["choices"] == reference["choices"]
        for stream, reference in zip(streams, expected):
            resp = stream.result()
            if resp.status_code == 503:  # lost before the first byte: a plain retryable error
                assert resp.json()["error"]["code"] == "reply_lost"
                continue
            assert resp.text.endswith("data: [DONE]\n\n")
            events = [json.loads(data) for data in sse_data(resp.text) if data.startswith("{")]
            if any("error" in event for event in events):  # lost mid-stream: an explicit error event
                assert [e["error"]["code"] for e in events if "error" in e] == ["reply_lost"]
                continue
            content = "".join(choice["delta"].get("content") or "" for e in events for choice in e["choices"])
            assert content == reference["choices"][0]["message"]["content"]


def test_waiting_requests_fail_at_once_when_redis_comes_back_without_their_jobs(
    stack_factory: StackFactory, own_redis: RedisServer, own_upstream: UpstreamServer
) -> None:
    # One job runs (the upstream takes 30 s), one waits in the queue behind it; Redis then restarts
    # empty (no AOF, or a failover to an empty replica). Both jobs are gone from Redis: their clients
    # hear so at once, not when their 600 s deadline passes, and the running upstream call is aborted.
    stack = stack_factory({"up": {"kind": "openai", "base_url": own_upstream.base_url, "concurrency": 1}},
                          {"slow": [{"provider": "up", "model": "slow"}],
                           "quick": [{"provider": "up", "model": "fake-model"}]},
                          redis_url=own_redis.url, queue={"heartbeat_interval_s": 0.3})
    base_url = stack.up("up")
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(httpx.post, f"{base_url}/chat/completions", json=chat("slow", "running"),
                              headers=headers, timeout=60)
        end = time.monotonic() + 10
        while not sent_upstream(own_upstream, "running"):
            assert time.monotonic() < end
            time.sleep(0.02)
        queued = pool.submit(httpx.post, f"{base_url}/chat/completions", json=chat("quick", "queued"),
                             headers=headers, timeout=60)
        time.sleep(0.3)
        disconnects = len(openai_upstream.DISCONNECTS)
        own_redis.kill()
        own_redis.start()  # same port, empty
        restarted = time.monotonic()
        for answer in (running.result(), queued.result()):
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "job_lost"
            assert answer.headers["retry-after"] == "1"  # a 503 that says "retry" says when
        assert time.monotonic() - restarted < 5
    end = time.monotonic() + 5
    while len(openai_upstream.DISCONNECTS) <= disconnects:  # the worker was told to stop paying for it
        assert time.monotonic() < end, "the running upstream call was never aborted"
        time.sleep(0.02)
    assert sent_upstream(own_upstream, "queued") == 0


def test_requests_failed_during_a_long_outage_are_not_run_when_redis_returns(
    stack_factory: StackFactory, persistent_redis: RedisServer
) -> None:
    # Redis (with AOF: its queue survives) is away longer than the API waits for it. The API fails the
    # waiting requests with 503; when Redis returns, their queued jobs must not be run for nobody,
    # and neither must the job that was running when Redis left (it is reclaimed after claim_idle_s).
    with UpstreamServer(chunks=4, chunk_delay_s=0.75) as upstream:  # a stream takes 3 s
        stack = stack_factory({"up": {"kind": "openai", "base_url": upstream.base_url, "concurrency": 1}},
                              {"m": [{"provider": "up", "model": "fake-model"}]}, redis_url=persistent_redis.url,
                              queue={"heartbeat_interval_s": 0.3, "claim_idle_s": 1.0})
        base_url = stack.up("up")
        headers = {"authorization": f"Bearer {TEST_KEY}"}
        markers = [f"queued-{i}" for i in range(5)]
        with ThreadPoolExecutor(8) as pool:
            holder = pool.submit(httpx.post, f"{base_url}/chat/completions", json=chat("m", "holder", stream=True),
                                 headers=headers, timeout=60)
            end = time.monotonic() + 10
            while not sent_upstream(upstream, "holder"):
                assert time.monotonic() < end
                time.sleep(0.02)
            waiting = [pool.submit(httpx.post, f"{base_url}/chat/completions", json=chat("m", marker),
                                   headers=headers, timeout=60) for marker in markers]
            time.sleep(0.5)
            persistent_redis.kill()  # the holder's stream ends meanwhile, and its worker is free again
            outage = time.monotonic()
            for answer in waiting:  # after the API's 5 s grace, it fails the waiting requests
                resp = answer.result()
                assert resp.status_code == 503, resp.text
            assert time.monotonic() - outage >= 5.0  # Redis stayed away past the grace, as before
            persistent_redis.start()  # with its AOF: the queued jobs and the holder's pending entry are back
            assert "error" in holder.result().text
        # The queued jobs are ahead of this one in its queue: once it is answered, the worker has resumed
        # pulling and has passed them. The holder's entry, idle since before the outage, is reclaimable at
        # the first heartbeat (0.3 s) after that; 2 s is claim_idle_s twice over for any run to show up.
        after = httpx.post(f"{base_url}/chat/completions", json=chat("m", "afterwards"), headers=headers, timeout=20)
        assert after.status_code == 200, after.text
        time.sleep(2)
        assert [sent_upstream(upstream, marker) for marker in markers] == [0] * len(markers)
        assert sent_upstream(upstream, "holder") == 1


def test_a_job_that_ends_while_redis_is_away_is_delivered_once_it_returns_not_run_again(
    stack_factory: StackFactory, persistent_redis: RedisServer
) -> None:
    # The job ends during a 2 s outage (shorter than the API's 5 s grace). Its worker keeps its outcome
    # until Redis is back, rather than leaving the entry to be reclaimed and paid for a second time.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3, "first_token_delay_s": 1.0}},
                          {"m": [{"provider": "mock", "model": "m"}]}, redis_url=persistent_redis.url,
                          queue={"heartbeat_interval_s": 0.3, "claim_idle_s": 1.0})
    base_url = stack.up("mock")
    worker = stack.workers[0]
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    body = chat("m", "finish me")
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{base_url}/chat/completions", json=body, headers=headers, timeout=30)
        time.sleep(0.5)
        persistent_redis.kill()
        time.sleep(2.0)
        persistent_redis.start()
        resp = answer.result()
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 3
    time.sleep(1.5)  # a lapsed lease would have been reclaimed by now
    assert "reclaimed job" not in worker.output()
