"""Async jobs: `Prefer: respond-async` answers 202 at once; /v1/jobs/{id} tells the status and the
result; DELETE cancels it upstream; ids are tenant-scoped."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
import redis

from broker.config import hash_key
from broker.keys import Keys
from tests.fakes import openai_upstream
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import REDIS_URL, TEST_KEY
from tests.stacks import StackFactory

OTHER_KEY = "sk-other-tenant-0001"
ASYNC = {"Prefer": "respond-async"}


pytestmark = pytest.mark.upstream(chunks=4)


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory, upstream: UpstreamServer) -> str:
    stack = module_stack_factory(
        {"up": {"kind": "openai", "base_url": upstream.base_url, "concurrency": 2}},
        {"quick": [{"provider": "up", "model": "fake-model"}], "slow": [{"provider": "up", "model": "slow"}],
         "broken": [{"provider": "up", "model": "fail-400"}], "hold": [{"provider": "up", "model": "hold"}]},
        tenants={"test": {"keys": [hash_key(TEST_KEY)]}, "other": {"keys": [hash_key(OTHER_KEY)]}},
    )
    return str(stack.up("up"))


def http(base_url: str, key: str = TEST_KEY) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {key}"}, timeout=30)


def wait_for(client: httpx.Client, job_id: str, *statuses: str, timeout_s: float = 10) -> dict[str, Any]:
    end = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < end, job
        time.sleep(0.05)


def test_an_async_request_answers_202_and_its_result_is_the_synchronous_body(client: openai.OpenAI,
                                                                           base_url: str) -> None:
    ask = {"model": "quick", "messages": [{"role": "user", "content": "hello async"}]}
    raw = client.chat.completions.with_raw_response.create(**ask, extra_headers=ASYNC)  # type: ignore[call-overload]
    assert raw.http_response.status_code == 202
    accepted = raw.http_response.json()
    assert accepted["object"] == "job" and accepted["status"] == "queued" and accepted["model"] == "quick"
    assert raw.headers["location"] == f"/v1/jobs/{accepted['id']}"
    assert raw.headers["preference-applied"] == "respond-async"
    assert raw.headers["x-request-id"] == f"req_{accepted['id']}"
    assert abs(accepted["created_at"] - time.time()) < 5
    with http(base_url) as api:
        done = wait_for(api, accepted["id"], "completed")
        # The x-request-id form of the id works too.
        assert api.get(f"/jobs/req_{accepted['id']}").json()["response"] == done["response"]
    synchronous = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    response = done["response"]
    assert response["object"] == "chat.completion" and response["model"] == synchronous.model
    assert response["choices"][0]["message"]["content"] == synchronous.choices[0].message.content
    assert set(response) == set(synchronous.model_dump(exclude_unset=True))


def test_an_async_job_runs_on_the_batch_lane_unless_told_otherwise(base_url: str, module_namespace: str) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    keys = Keys(module_namespace)
    with http(base_url) as api:
        # Two held calls fill the worker's two slots, so the next jobs wait in their lanes' streams.
        busy = [api.post("/chat/completions", headers=ASYNC, json={"model": "hold", "messages": [
            {"role": "user", "content": f"busy {i}"}]}).json()["id"] for i in range(2)]
        time.sleep(0.3)
        queued = api.post("/chat/completions", headers=ASYNC, json={"model": "quick", "messages": [
            {"role": "user", "content": "later"}]}).json()["id"]
        urgent = api.post("/chat/completions", headers={**ASYNC, "X-Priority": "interactive"}, json={
            "model": "quick", "messages": [{"role": "user", "content": "sooner"}]}).json()["id"]
        assert r.xlen(keys.queue("up", "batch", "test")) >= 1
        assert r.xlen(keys.queue("up", "interactive", "test")) >= 1
        for job_id in (*busy, queued, urgent):
            wait_for(api, job_id, "completed")


def test_delete_cancels_a_running_job_upstream_and_its_status_says_so(base_url: str) -> None:
    seen = len(openai_upstream.DISCONNECTS)
    with http(base_url) as api:
        job_id = api.post("/chat/completions", headers=ASYNC, json={"model": "slow", "messages": [
            {"role": "user", "content": "never mind"}]}).json()["id"]
        wait_for(api, job_id, "in_progress")
        time.sleep(0.2)  # the upstream call is under way
        asked = time.time()
        cancelled = api.delete(f"/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        end = time.monotonic() + 3
        while len(openai_upstream.DISCONNECTS) <= seen:
            assert time.monotonic() < end, "the upstream call was never aborted"
            time.sleep(0.01)
        assert openai_upstream.DISCONNECTS[-1] - asked < 1.0
        final = wait_for(api, job_id, "cancelled")
        assert "response" not in final and "error" not in final
        # Cancelling a job that has ended changes nothing.
        done = api.post("/chat/completions", headers=ASYNC, json={"model": "quick", "messages": [
            {"role": "user", "content": "finished"}]}).json()["id"]
        wait_for(api, done, "completed")
        assert api.delete(f"/jobs/{done}").json()["status"] == "completed"


def test_a_failed_job_carries_the_openai_error(base_url: str) -> None:
    ask = {"model": "broken", "messages": [{"role": "user", "content": "bad"}]}
    with http(base_url) as api:
        job_id = api.post("/chat/completions", headers=ASYNC, json=ask).json()["id"]
        failed = wait_for(api, job_id, "failed")
        synchronous = api.post("/chat/completions", json=ask)
    assert synchronous.status_code == 400
    assert failed["error"] == synchronous.json()["error"]
    assert set(failed["error"]) == {"message", "type", "param", "code"}


def test_a_job_that_outlives_its_deadline_is_expired(base_url: str) -> None:
    with http(base_url) as api:
        job_id = api.post("/chat/completions", headers={**ASYNC, "X-Request-Timeout": "1"}, json={
            "model": "slow", "messages": [{"role": "user", "content": "too slow"}]}).json()["id"]
        expired = wait_for(api, job_id, "expired", "failed", timeout_s=15)
    assert expired["status"] == "expired"


def test_jobs_are_tenant_scoped_and_unknown_ids_are_404(base_url: str) -> None:
    with http(base_url) as api, http(base_url, OTHER_KEY) as other:
        job_id = api.post("/chat/completions", headers=ASYNC, json={"model": "quick", "messages": [
            {"role": "user", "content": "mine"}]}).json()["id"]
        for response in (other.get(f"/jobs/{job_id}"), other.delete(f"/jobs/{job_id}"),
                         other.get(f"/jobs/{job_id}/events"), api.get("/jobs/0123456789abcdef0123456789abcdef"),
                         api.get("/jobs/not-an-id"), api.delete("/jobs/req_")):
            assert response.status_code == 404, response.text
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == "job_not_found"
        assert api.get("/jobs/..%2F..%2Fetc").status_code == 404
        assert wait_for(api, job_id, "completed")["status"] == "completed"
        assert httpx.get(f"{base_url}/jobs/{job_id}").status_code == 401
