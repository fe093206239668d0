"""Resumable streams: SSE events carry ids; a client that dropped reconnects to
/v1/jobs/{id}/events with Last-Event-ID and gets exactly the rest, with no gap and no duplicate."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from broker.config import hash_key
from tests.fakes import openai_upstream
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import TEST_KEY
from tests.stacks import StackFactory

OTHER_KEY = "sk-other-tenant-0002"
HEADERS = {"authorization": f"Bearer {TEST_KEY}"}
CHUNKS = 8


pytestmark = pytest.mark.upstream(chunks=CHUNKS, chunk_delay_s=0.2)


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory, upstream: UpstreamServer) -> str:
    stack = module_stack_factory(
        {"up": {"kind": "openai", "base_url": upstream.base_url}},
        {"m": [{"provider": "up", "model": "fake-model"}], "hang": [{"provider": "up", "model": "hang-stream"}]},
        tenants={"test": {"keys": [hash_key(TEST_KEY)]}, "other": {"keys": [hash_key(OTHER_KEY)]}},
        server={"keepalive_interval_s": 0.1, "stream_resume_grace_s": 1.0},
    )
    return str(stack.up("up"))


def ask(marker: str, model: str = "m") -> dict[str, Any]:
    return {"model": model, "stream": True, "messages": [{"role": "user", "content": marker}]}


def events(lines: Iterator[str], limit: int | None = None) -> list[tuple[str | None, str]]:
    """(id, data) of each SSE event, up to `limit` events; comments are skipped."""
    found: list[tuple[str | None, str]] = []
    event_id = None
    for line in lines:
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            found.append((event_id, line[6:]))
            event_id = None
            if limit is not None and len(found) >= limit:
                break
    return found


def content(found: list[tuple[str | None, str]]) -> str:
    return "".join((json.loads(data)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                   for _, data in found if data != "[DONE]")


def resume(base_url: str, request_id: str, last: str | None, key: str = TEST_KEY, limit: int | None = None
           ) -> tuple[int, list[tuple[str | None, str]]]:
    headers = {"authorization": f"Bearer {key}", **({"last-event-id": last} if last else {})}
    with httpx.stream("GET", f"{base_url}/jobs/{request_id}/events", headers=headers, timeout=30) as resp:
        if resp.status_code != 200:
            resp.read()
            return resp.status_code, [(None, resp.text)]
        return 200, events(resp.iter_lines(), limit)


def whole_text(client: openai.OpenAI, marker: str) -> Future[str]:
    """The text of an uninterrupted stream, read in the background (1.6 s) while the test reads its own."""
    def read() -> str:
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**ask(marker))
                       if c.choices)
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(read)
    finally:
        pool.shutdown(wait=False)


def test_a_dropped_stream_resumes_exactly_after_its_last_event(client: openai.OpenAI, base_url: str) -> None:
    whole = whole_text(client, "resume me")
    with httpx.stream("POST", f"{base_url}/chat/completions", json=ask("resume me"), headers=HEADERS,
                      timeout=30) as resp:
        request_id = resp.headers["x-request-id"]
        first = events(resp.iter_lines(), limit=3)
    assert [event_id for event_id, _ in first] == ["1.0", "1.1", "1.2"]
    # Reconnect as often as it takes, two events at a time: never a gap, never a duplicate.
    got, last = list(first), first[-1][0]
    while got[-1][1] != "[DONE]":
        status, more = resume(base_url, request_id, last, limit=2)
        assert status == 200
        got += more
        last = [event_id for event_id, _ in got if event_id][-1]
    ids = [event_id for event_id, _ in got if event_id]
    assert ids == [f"1.{i}" for i in range(len(ids))]
    assert content(got) == whole.result() and len(ids) >= CHUNKS
    # After the end, the events stay for late readers (server.stream_resume_ttl_s).
    status, replay = resume(base_url, request_id, None)
    assert status == 200 and replay == [e for e in got if e[0] or e[1] == "[DONE]"]
    status, tail = resume(base_url, request_id, ids[-2])
    assert tail == [got[-2], (None, "[DONE]")]


def test_the_sdk_parses_a_resumed_stream_into_the_text_of_an_uninterrupted_one(client: openai.OpenAI,
                                                                               base_url: str) -> None:
    whole = whole_text(client, "sdk resume")
    with httpx.stream("POST", f"{base_url}/chat/completions", json=ask("sdk resume"), headers=HEADERS,
                      timeout=30) as resp:  # forced disconnect after three events
        request_id = resp.headers["x-request-id"]
        first = events(resp.iter_lines(), limit=3)
    before = content(first)
    resumed = client.get(f"/jobs/{request_id}/events", cast_to=ChatCompletionChunk, stream=True,
                         stream_cls=openai.Stream[ChatCompletionChunk],
                         options={"headers": {"Last-Event-ID": str(first[-1][0])}})
    after = "".join(c.choices[0].delta.content or "" for c in resumed if c.choices)
    assert before and after and before + after == whole.result()


def test_a_client_that_does_not_come_back_has_its_job_cancelled_after_the_grace(base_url: str) -> None:
    seen = len(openai_upstream.DISCONNECTS)
    with httpx.stream("POST", f"{base_url}/chat/completions", json=ask("gone", "hang"), headers=HEADERS,
                      timeout=30) as resp:
        assert events(resp.iter_lines(), limit=1)
        left = time.time()
    end = time.monotonic() + 5
    while len(openai_upstream.DISCONNECTS) <= seen:
        assert time.monotonic() < end, "the upstream call was never aborted"
        time.sleep(0.01)
    assert 0.9 <= openai_upstream.DISCONNECTS[-1] - left < 2.0  # stream_resume_grace_s: 1


def test_a_client_that_comes_back_keeps_its_job_running(base_url: str) -> None:
    seen = len(openai_upstream.DISCONNECTS)
    with httpx.stream("POST", f"{base_url}/chat/completions", json=ask("back soon", "hang"), headers=HEADERS,
                      timeout=30) as resp:
        request_id = resp.headers["x-request-id"]
        first = events(resp.iter_lines(), limit=1)
    with httpx.stream("GET", f"{base_url}/jobs/{request_id}/events", timeout=30,
                      headers={**HEADERS, "last-event-id": str(first[0][0])}) as resumed:
        assert resumed.status_code == 200
        lines = resumed.iter_lines()
        keepalives = 0
        for line in lines:  # the upstream stalls: only keep-alives come, as bare comment lines
            assert not line.startswith("data: ")
            keepalives += line == ": keep-alive"
            if keepalives >= 20:  # 2 s: past the 1 s grace
                break
    assert len(openai_upstream.DISCONNECTS) == seen  # nobody cancelled it while the reader was attached
    end = time.monotonic() + 5
    while len(openai_upstream.DISCONNECTS) <= seen:  # the resumed reader left too: now it is cancelled
        assert time.monotonic() < end, "the upstream call was never aborted"
        time.sleep(0.01)


def test_the_sdk_reads_streams_with_ids_and_keepalives_between_them(client: openai.OpenAI, base_url: str) -> None:
    # Chunks 0.2 s apart and keep-alives every 0.1 s: comments fall between events that carry ids,
    # the case where the SDK's decoder would yield an empty event for a blank line (it never resets the
    # last id: `SSEDecoder.decode` in openai-python's src/openai/_streaming.py).
    # The two streams run side by side.
    with ThreadPoolExecutor(1) as pool:
        sdk = pool.submit(lambda: list(client.chat.completions.create(**ask("sdk"))))  # type: ignore[call-overload]
        with httpx.stream("POST", f"{base_url}/chat/completions", json=ask("raw"), headers=HEADERS,
                          timeout=30) as resp:
            raw = resp.read().decode()
        chunks = sdk.result()
    after_ids = raw.split("id: 1.0\ndata: ", 1)[1]
    assert ": keep-alive\n" in after_ids and ": keep-alive\n\n" not in after_ids
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= CHUNKS - 1


def test_an_async_stream_is_read_from_its_events(base_url: str) -> None:
    with httpx.Client(base_url=base_url, headers=HEADERS, timeout=30) as api:
        accepted = api.post("/chat/completions", json=ask("later"), headers={"prefer": "respond-async"})
        assert accepted.status_code == 202
        job_id = accepted.json()["id"]
        assert accepted.json()["stream"] is True
        status, got = resume(base_url, job_id, None)  # attaches while it runs (or even before)
        assert status == 200 and got[-1] == (None, "[DONE]") and len(got) > CHUNKS
        job = api.get(f"/jobs/{job_id}").json()
        assert job["status"] == "completed" and "response" not in job


def test_resuming_is_tenant_scoped_and_checks_its_id(base_url: str) -> None:
    with httpx.stream("POST", f"{base_url}/chat/completions", json=ask("private"), headers=HEADERS,
                      timeout=30) as resp:
        request_id = resp.headers["x-request-id"]
        resp.read()
    status, body = resume(base_url, request_id, None, key=OTHER_KEY)
    assert status == 404 and json.loads(body[0][1])["error"]["code"] == "job_not_found"
    status, body = resume(base_url, request_id, "soon")
    assert status == 400 and json.loads(body[0][1])["error"]["param"] == "Last-Event-ID"
    status, body = resume(base_url, "req_" + "0" * 32, None)
    assert status == 404
