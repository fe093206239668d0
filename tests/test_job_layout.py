"""The Job on the stream: one tagged payload in a compact array, and jobs earlier releases left waiting
still served.

tests/fixtures/jobs/previous_layout.json holds jobs encoded by the release before the tagged
payload (its Job had three optional fields, `request`, `completion` and `embedding`): their
msgpack bytes as that release's encoder wrote them, and the same jobs as JSON to compare with.
tests/fixtures/jobs/map_layout.json holds the same jobs as the release before the array wrote them
(a map of field names, at f0f3a72 and up to 334abfd): what a rolling upgrade from it leaves in a stream,
and what `queue.write_format: 1` must write for that release's workers.
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
import openai
import pytest
import redis.asyncio as aioredis

from broker.config import load
from broker.keys import Keys
from broker.queue import async_jobs, streams
from broker.queue.jobs import Job, Target, decode_job, decode_queued, encode_queued, encode_whole, job_encoder
from broker.queue.payloads import ChatPayload, CompletionPayload, EmbeddingPayload, payload_for
from broker.wire import ChatRequest, CompletionRequest, EmbeddingRequest
from tests.harness import REDIS_URL, TEST_KEY

FROZEN = json.loads((Path(__file__).parent / "fixtures" / "jobs" / "previous_layout.json").read_text())
MAP_LAYOUT = json.loads((Path(__file__).parent / "fixtures" / "jobs" / "map_layout.json").read_text())
PREFIX = "llmb:replies:"  # the frozen jobs' namespace is `llmb`
# What a field of a job left at its default reads as (the map layouts left those fields out).
DEFAULTS = {f.name: msgspec.to_builtins(f.default_factory() if f.default_factory is not msgspec.NODEFAULT
                                        else f.default) for f in msgspec.structs.fields(Job) if not f.required}
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
    as_json = msgspec.to_builtins(msgspec.structs.asdict(job))
    del as_json["payload"]
    assert {k: v for k, v in as_json.items() if k in expected} == expected  # ids, routing, failures, budgets
    assert {k: v for k, v in as_json.items() if k not in expected} == {k: v for k, v in DEFAULTS.items()
                                                                          if k not in expected and k != "payload"}


@pytest.mark.parametrize("name", ["chat", "completion", "embedding"])
def test_a_job_in_the_map_layout_decodes_from_a_queue_entry_and_a_dead_letter(name: str) -> None:
    frozen = base64.b64decode(MAP_LAYOUT[name]["msgpack_b64"])
    as_json = msgspec.to_builtins(msgspec.structs.asdict(decode_job(frozen)))
    expected = MAP_LAYOUT[name]["as_json"]
    assert {k: v for k, v in as_json.items() if k in expected} == expected
    # From a stream: the entry's id field and this release's prefix do not touch a whole map job.
    assert decode_queued(frozen, "another-id", "other:replies:") == decode_job(frozen)


@pytest.mark.parametrize("name", ["chat", "completion", "embedding"])
def test_write_format_1_writes_the_bytes_the_release_before_wrote(name: str) -> None:
    """What a worker of that release reads while a rolling upgrade runs with `queue.write_format: 1`."""
    frozen = base64.b64decode(MAP_LAYOUT[name]["msgpack_b64"])
    assert encode_queued(decode_job(frozen), PREFIX, layout=1) == frozen


@pytest.mark.parametrize("name", ["chat", "completion", "embedding"])
def test_a_dead_letter_keeps_the_whole_job_in_either_format(name: str) -> None:
    """A dead letter's job is whole (its id and reply channel in it); format 1 writes it as the release before."""
    frozen = base64.b64decode(MAP_LAYOUT[name]["msgpack_b64"])
    job = decode_job(frozen)
    assert encode_whole(job, 1) == frozen
    assert isinstance(msgspec.msgpack.decode(encode_whole(job)), list) and decode_job(encode_whole(job)) == job


def _full_job() -> Job:
    """A job with every field away from its default, so none is lost to trimming or position."""
    job = decode_job(base64.b64decode(MAP_LAYOUT["chat"]["msgpack_b64"]))
    return msgspec.structs.replace(job, fallbacks=[Target("second", "m-2", 8192), Target("third", "m-3")],
                                   racing_with="first", hedges=1, key_tpm=10_000)


def test_the_queued_form_leaves_out_the_id_and_the_prefix_and_restores_them() -> None:
    job = _full_job()
    queued = encode_queued(job, PREFIX)
    assert job.id.encode() not in queued and PREFIX.encode() not in queued
    assert decode_queued(queued, job.id, PREFIX) == job
    assert len(queued) < len(encode_queued(job, PREFIX, layout=1)) - 100  # field names and id gone


def test_the_queued_form_trims_trailing_defaults_and_keeps_a_foreign_reply_channel() -> None:
    job = Job(id="j", tenant="t", model="m", provider="p", upstream_model="u", reply_to="elsewhere", created=1.0,
              deadline=2.0, payload=payload_for(CompletionRequest(model="m", prompt="hi")))
    queued = encode_queued(job, PREFIX)
    assert len(msgspec.msgpack.decode(queued)) == 9  # the required fields only
    assert decode_queued(queued, "j", PREFIX) == job  # "elsewhere", not PREFIX + "elsewhere"
    with_prefix = msgspec.structs.replace(job, reply_to=PREFIX + "=x")  # an instance name like the marker
    assert decode_queued(encode_queued(with_prefix, PREFIX), "j", PREFIX) == with_prefix


def test_a_shorter_array_of_an_older_release_reads_as_defaults() -> None:
    """Job only appends fields: an array written before a field existed decodes with its default."""
    job = _full_job()
    older = msgspec.msgpack.decode(encode_queued(job, PREFIX))[:-1]  # as if key_tpm had not existed yet
    assert decode_queued(msgspec.msgpack.encode(older), job.id, PREFIX) == msgspec.structs.replace(job, key_tpm=0)


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
        tag = msgspec.msgpack.decode(raw)[Job.__struct_fields__.index("payload")][0]
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


@pytest.mark.parametrize("layout", ["request fields", "map"])
def test_a_job_an_earlier_release_left_in_a_stream_is_served_by_this_worker(
        stack_factory: Any, namespace: str, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """Rolling upgrade: the old API enqueued an async chat job; the new worker runs it, and the new
    API answers its `/v1/jobs/{id}` with the same answer a fresh request gets. `request fields`: the
    release before the tagged payload; `map`: the release before the array."""
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
    if layout == "map":  # the same job as the release before the array wrote it
        old_bytes = encode_queued(decode_job(old_bytes), keys.replies(""), layout=1)
        assert "payload" in msgspec.msgpack.decode(old_bytes)

    def previous_release(job: Job, replies_prefix: str, layout: int = 2) -> bytes:
        return old_bytes  # the old API's encoder: this job's bytes as that release wrote them

    async def enqueue_as_the_previous_release() -> None:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            job = decode_job(old_bytes)
            await async_jobs.submit(client, keys, job)
            monkeypatch.setattr(streams, "encode_queued", previous_release)
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


@pytest.mark.parametrize("write_format", [1, 2])
def test_jobs_queued_in_either_layout_are_served_and_held_as_written(
        stack_factory: Any, namespace: str, write_format: int) -> None:
    """`queue.write_format: 1` (a rolling upgrade from the release before) queues the map its workers read
    and logs events as its APIs read them; 2 the array and `d` elements; this release serves both."""
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 12, "token_delay_s": 0.05}},
                          {"m": [{"provider": "mock", "model": "m"}]}, queue={"write_format": write_format})
    base_url = stack.up("mock")
    keys = Keys(namespace)
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = [next(iter(stream)).choices[0].delta.content or ""]

    async def entry() -> tuple[str, bytes]:
        r = aioredis.Redis.from_url(REDIS_URL)
        try:
            ((_, fields),) = await r.xrange(keys.queue("mock", "default", "test"))
            return fields[b"id"].decode(), fields[b"job"]
        finally:
            await r.aclose()

    job_id, queued = asyncio.run(entry())  # held while the job runs
    text += [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(text).strip() and stream.response.headers["x-request-id"] == f"req_{job_id}"
    written = msgspec.msgpack.decode(queued)
    if write_format == 1:
        assert isinstance(written, dict) and written["id"] == job_id
    else:
        assert isinstance(written, list) and job_id.encode() not in queued
    job = decode_queued(queued, job_id, keys.replies(""))
    assert job.id == job_id and job.reply_to.startswith(keys.replies("")) and job.streams

    async def log_kinds() -> set[bytes]:  # the stream's event log, as the worker wrote it
        r = aioredis.Redis.from_url(REDIS_URL)
        try:
            return {e[:1] for e in await r.lrange(keys.event_log(job_id), 0, -1)}  # type: ignore[misc]
        finally:
            await r.aclose()

    kinds = asyncio.run(log_kinds())
    # One event a flush at the mock's pace: `d` elements, which the release before cannot read, only in format 2.
    assert {b"o", b"e", b"r"} <= kinds and (b"d" in kinds) == (write_format == 2)
