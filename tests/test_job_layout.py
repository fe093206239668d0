"""The Job on the stream: one tagged payload, and jobs the previous release left waiting still served.

tests/fixtures/jobs/previous_layout.json holds jobs encoded by the release before the tagged
payload (its Job had three optional fields, `request`, `completion` and `embedding`): their
msgpack bytes as that release's encoder wrote them, and the same jobs as JSON to compare with.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from broker.config import load
from broker.keys import Keys
from broker.queue import async_jobs, streams
from broker.queue.jobs import Job, decode_job, job_encoder
from broker.queue.payloads import ChatPayload, CompletionPayload, EmbeddingPayload, payload_for
from broker.wire import ChatRequest, CompletionRequest, EmbeddingRequest
from tests.harness import REDIS_URL, TEST_KEY

FROZEN = json.loads((Path(__file__).parent / "fixtures" / "jobs" / "previous_layout.json").read_text())
REQUEST_TYPES = {"request": ChatRequest, "completion": CompletionRequest, "embedding": EmbeddingRequest}
PAYLOAD_TYPES = {"request": ChatPayload, "completion": CompletionPayload, "embedding": EmbeddingPayload}


def frozen_bytes(name: str) -> bytes:
    return base64.b64decode(FROZEN[name]["msgpack_b64"])


@pytest.mark.parametrize("name", ["chat", "completion", "embedding"])
def test_a_job_in_the_previous_layout_decodes_with_every_field_kept(name: str) -> None:
    job = decode_job(frozen_bytes(name))
    expected = dict(FROZEN[name]["as_json"])
    (field,) = [f for f in REQUEST_TYPES if f in expected]
    assert type(job.payload) is PAYLOAD_TYPES[field]
    assert job.request == msgspec.convert(expected.pop(field), REQUEST_TYPES[field])
    as_json = json.loads(msgspec.json.encode(job))
    del as_json["payload"]
    assert as_json == expected  # ids, routing, failures, budgets, deadlines: nothing lost


def test_the_frozen_chat_job_keeps_its_nested_parts() -> None:
    job = decode_job(frozen_bytes("chat"))
    assert isinstance(job.payload, ChatPayload) and job.streams
    assert job.request.model == "public-chat" and job.payload.request.tools
    assert [t.provider for t in job.fallbacks] == ["second"] and job.failures[0].status == 502
    assert job.request.extra_body == {"top_k": 5}


def test_the_payload_tag_travels_on_the_wire_and_round_trips() -> None:
    for request in (msgspec.convert({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, ChatRequest),
                    CompletionRequest(model="m", prompt="hi"), EmbeddingRequest(model="m", input="hi")):
        job = Job(id="j", tenant="t", model="m", provider="p", upstream_model="u", reply_to="r", created=1.0,
                  deadline=2.0, payload=payload_for(request))
        raw = job_encoder.encode(job)
        tag = msgspec.msgpack.decode(raw)["payload"][0]
        assert tag == {ChatRequest: "chat", CompletionRequest: "completion", EmbeddingRequest: "embedding"}[
            type(request)]
        assert decode_job(raw) == job


def test_a_previous_layout_job_with_no_request_or_two_is_refused() -> None:
    fields = msgspec.msgpack.decode(frozen_bytes("embedding"))
    with_two = {**fields, "completion": msgspec.msgpack.decode(frozen_bytes("completion"))["completion"]}
    without = {k: v for k, v in fields.items() if k != "embedding"}
    for broken in (with_two, without):
        with pytest.raises(msgspec.ValidationError):
            decode_job(msgspec.msgpack.encode(broken))


def test_a_job_the_previous_release_left_in_a_stream_is_served_by_this_worker(
        stack_factory: Any, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rolling upgrade: the old API enqueued an async chat job; the new worker runs it, and the new
    API answers its `/v1/jobs/{id}` with the same answer a fresh request gets."""
    stack = stack_factory({"mock": {"kind": "mock"}}, {"m": [{"provider": "mock", "model": "m"}]})
    base_url = stack.up("mock")
    config, keys = load(stack.config_path), Keys(namespace)
    prompt = "left behind by the last release"
    now = time.time()
    old = msgspec.msgpack.decode(frozen_bytes("chat"))
    for gone in ("fallbacks", "failures", "budget_counters", "budget_reserved", "route", "hedge_after_ms",
                 "key", "key_tpm", "estimated_tokens", "max_context", "attempt"):
        old.pop(gone, None)
    old.update(id=uuid.uuid4().hex, tenant="test", model="m", provider="mock", upstream_model="m",
               reply_to=keys.replies("async"), created=now, deadline=now + 30, lane="default", async_ttl_s=600)
    old["request"] = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
    old_bytes = msgspec.msgpack.encode(old)
    assert "payload" not in msgspec.msgpack.decode(old_bytes)

    class PreviousRelease:  # the old API's encoder: this job's bytes as the last release wrote them
        @staticmethod
        def encode(job: Job) -> bytes:
            return old_bytes

    async def enqueue_as_the_previous_release() -> None:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            job = decode_job(old_bytes)
            await async_jobs.submit(client, keys, job)
            monkeypatch.setattr(streams, "job_encoder", PreviousRelease)
            await streams.enqueue(streams.QueueScripts(client), keys, config, job)
        finally:
            await client.aclose()

    asyncio.run(enqueue_as_the_previous_release())
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as http:
        end = time.monotonic() + 15
        while (found := http.get(f"/jobs/{old['id']}").json())["status"] not in ("completed", "failed"):
            assert time.monotonic() < end, found
            time.sleep(0.05)
        assert found["status"] == "completed", found
        fresh = http.post("/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": prompt}]})
    answer = found["response"]["choices"][0]["message"]["content"]
    assert answer and answer == fresh.json()["choices"][0]["message"]["content"]
