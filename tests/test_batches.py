"""The OpenAI Batch API through the official SDK: files, batches, their lifecycle, cancellation,
and a batch worker killed mid-batch losing no line and running none twice into the output."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
import openai
import pytest
import redis

from broker.config import hash_key
from broker.keys import Keys
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import REDIS_URL, TEST_KEY
from tests.stacks import Stack, StackFactory

OTHER_KEY = "sk-other-tenant-0003"


pytestmark = pytest.mark.upstream(chunks=3)


@pytest.fixture(scope="module")
def stack(module_stack_factory: StackFactory, upstream: UpstreamServer) -> Stack:
    stack = module_stack_factory(
        {"up": {"kind": "openai", "base_url": upstream.base_url, "concurrency": 16},
         "narrow": {"kind": "openai", "base_url": upstream.base_url, "concurrency": 2}},
        {"quick": [{"provider": "up", "model": "fake-model"}], "broken": [{"provider": "up", "model": "fail-400"}],
         "hold": [{"provider": "up", "model": "hold"}], "narrow-hold": [{"provider": "narrow", "model": "hold"}]},
        tenants={"test": {"keys": [hash_key(TEST_KEY)]}, "other": {"keys": [hash_key(OTHER_KEY)]}},
        batches={"max_in_flight": 50},
    )
    stack.up("up", "narrow")
    stack.batch_worker()
    return stack


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> str:
    return str(stack.base_url)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(custom_id: str, model: str = "quick", text: str | None = None) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text or f"say {custom_id}"}]}}


def wait_until(client: openai.OpenAI, batch_id: str, *statuses: str, timeout_s: float = 60) -> Any:
    end = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < end, batch
        time.sleep(0.2)


def until_some_completed(client: openai.OpenAI, batch_id: str, timeout_s: float = 30) -> None:
    """Until the batch has answered a line (and so has more in flight): rather than a fixed sleep."""
    end = time.monotonic() + timeout_s
    while client.batches.retrieve(batch_id).request_counts.completed == 0:
        assert time.monotonic() < end
        time.sleep(0.1)


def by_custom_id(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    lines = [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
    found = {line["custom_id"]: line for line in lines}
    assert len(found) == len(lines), "a line appears twice"
    return found


def test_a_batch_runs_every_line_and_keys_its_output_by_custom_id(client: openai.OpenAI) -> None:
    lines = [chat_line(f"ok-{i}") for i in range(30)] + [chat_line("bad-1", "broken"), chat_line("bad-2", "broken")]
    uploaded = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines)) and uploaded.filename == "input.jsonl"
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"job": "nightly"})
    assert batch.status == "validating" and batch.metadata == {"job": "nightly"}
    done = wait_until(client, batch.id, "completed", "failed")
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (32, 30, 2)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
    output = by_custom_id(client, done.output_file_id)
    errors = by_custom_id(client, done.error_file_id)
    assert set(output) == {f"ok-{i}" for i in range(30)} and set(errors) == {"bad-1", "bad-2"}
    reference = client.chat.completions.create(model="quick", messages=[{"role": "user", "content": "say ok-7"}])
    line = output["ok-7"]
    assert line["error"] is None and line["response"]["status_code"] == 200
    assert line["response"]["request_id"].startswith("req_") and line["id"].startswith("batch_req_")
    assert line["response"]["body"]["choices"][0]["message"]["content"] == reference.choices[0].message.content
    failed = errors["bad-1"]["response"]
    assert failed["status_code"] == 400 and set(failed["body"]["error"]) == {"message", "type", "param", "code"}
    output_file = client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"


def test_a_batch_reports_its_files_only_once_they_can_be_downloaded(client: openai.OpenAI) -> None:
    lines = [chat_line("bad", "broken")] + [chat_line(f"held-{i}", "hold") for i in range(40)]  # 1 s each, 16 at once
    uploaded = client.files.create(file=("held.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    until_some_completed(client, batch.id)  # both files have lines written now, neither is a file yet
    running = client.batches.retrieve(batch.id)
    listed = next(b for b in client.batches.list() if b.id == batch.id)
    assert running.status == listed.status == "in_progress" and running.request_counts.failed == 1
    assert (running.output_file_id, running.error_file_id, listed.output_file_id, listed.error_file_id) == (None,) * 4
    done = wait_until(client, batch.id, "completed")
    assert done.output_file_id and done.error_file_id
    assert len(by_custom_id(client, done.output_file_id)) == 40
    assert set(by_custom_id(client, done.error_file_id)) == {"bad"}


def test_an_input_file_is_checked_line_by_line(client: openai.OpenAI) -> None:
    good = chat_line("a")
    cases = {
        b"not json\n": "line 1:",
        jsonl([good, good]): "line 2: duplicate `custom_id` 'a'",
        jsonl([good, {**chat_line("b"), "method": "GET"}]): "line 2: `method` must be POST",
        jsonl([good, {**chat_line("b"), "url": "/v1/embeddings", "body": {"model": "quick"}}]): "line 2: invalid `body`",
        jsonl([{**good, "body": {"model": "quick", "messages": "hi"}}]): "line 1: invalid `body`",
        b"\n\n": "holds no requests",
    }
    for body, expected in cases.items():
        with pytest.raises(openai.BadRequestError) as info:
            client.files.create(file=("in.jsonl", body), purpose="batch")
        assert expected in info.value.message and info.value.param == "file", (expected, info.value.message)
    with pytest.raises(openai.BadRequestError) as wrong:
        client.files.create(file=("in.jsonl", jsonl([good])), purpose="fine-tune")
    assert wrong.value.param == "purpose"


def test_files_and_batches_are_listed_read_deleted_and_tenant_scoped(client: openai.OpenAI, base_url: str) -> None:
    uploaded = client.files.create(file=("mine.jsonl", jsonl([chat_line("x")])), purpose="batch")
    assert uploaded.id in [f.id for f in client.files.list()]
    assert client.files.content(uploaded.id).content == jsonl([chat_line("x")])
    other = openai.OpenAI(base_url=base_url, api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert uploaded.id not in [f.id for f in other.files.list()]
    created = [client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h").id for _ in range(3)]
    pages = client.batches.list(limit=2)
    assert len(pages.data) == 2 and pages.has_more
    listed = [b.id for b in client.batches.list(limit=2)]  # iterating, the SDK follows `after`
    assert listed[:3] == created[::-1] and len(listed) == len(set(listed))
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(created[0])
    assert other.batches.list().data == []
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                              completion_window="1h")  # type: ignore[arg-type]
    for batch_id in created:
        wait_until(client, batch_id, "completed")
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    assert httpx.get(f"{base_url}/files").status_code == 401


def test_a_cancelled_batch_stops_its_lines_and_keeps_what_ended(client: openai.OpenAI) -> None:
    lines = [chat_line(f"slow-{i}", "hold") for i in range(200)]  # 1 s each, 16 at a time
    uploaded = client.files.create(file=("slow.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    until_some_completed(client, batch.id)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = wait_until(client, batch.id, "cancelled", timeout_s=30)
    output, errors = by_custom_id(client, done.output_file_id), by_custom_id(client, done.error_file_id)
    assert 0 < len(output) < 200 and not set(output) & set(errors)
    assert {line["error"]["code"] for line in errors.values()} <= {"batch_cancelled"}
    assert done.request_counts.completed == len(output) and done.request_counts.failed == len(errors)
    assert client.batches.cancel(batch.id).status == "cancelled"  # cancelling again changes nothing


def test_a_batch_worker_killed_mid_batch_loses_no_line_and_runs_none_twice(client: openai.OpenAI,
                                                                          stack: Stack) -> None:
    lines = [chat_line(f"line-{i}", "hold") for i in range(64)]  # ~4 s at 16 at a time
    uploaded = client.files.create(file=("crash.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_until(client, batch.id, "in_progress")
    time.sleep(1.5)
    doomed = [p for p in stack.procs if p.args[0] == "batch-worker" and p.popen.poll() is None]
    for proc in doomed:
        proc.kill()
    assert 0 < client.batches.retrieve(batch.id).request_counts.completed < 64
    stack.batch_worker()  # the survivor resumes it: its cron finds the batch without a running step
    done = wait_until(client, batch.id, "completed", timeout_s=120)
    output = by_custom_id(client, done.output_file_id)
    assert set(output) == {f"line-{i}" for i in range(64)} and done.error_file_id is None
    assert done.request_counts.completed == 64


def test_interactive_requests_keep_their_precedence_while_a_batch_runs(client: openai.OpenAI) -> None:
    # `narrow` (2 slots) serves nothing else in this module: the batch fills both.
    lines = [chat_line(f"bulk-{i}", "narrow-hold") for i in range(14)]  # 1 s each, 2 at a time: ~7 s of work
    uploaded = client.files.create(file=("bulk.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    end = time.monotonic() + 20
    while client.batches.retrieve(batch.id).request_counts.completed < 2:  # the batch lane is backed up now
        assert time.monotonic() < end
        time.sleep(0.1)
    started = time.monotonic()
    answer = client.chat.completions.create(model="narrow-hold", messages=[{"role": "user", "content": "me first"}],
                                            extra_headers={"X-Priority": "interactive"})
    waited = time.monotonic() - started
    assert answer.choices[0].message.content
    # The next free slot goes to it (at most ~1 s behind the calls running), not behind ~10 batch lines.
    assert waited < 3.0, waited
    assert client.batches.retrieve(batch.id).status == "in_progress"
    assert wait_until(client, batch.id, "completed", timeout_s=60).request_counts.completed == 14


def test_a_batch_past_its_window_expires_with_its_unfinished_lines(client: openai.OpenAI, stack: Stack,
                                                                   module_namespace: str) -> None:
    lines = [chat_line(f"late-{i}", "hold") for i in range(300)]  # far more than fits in the time left
    uploaded = client.files.create(file=("late.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_until(client, batch.id, "in_progress")
    time.sleep(1.5)
    # 24 hours pass, during which the batch worker is replaced: the batch's window has ended when
    # the new one takes the batch over.
    for proc in [p for p in stack.procs if p.args[0] == "batch-worker" and p.popen.poll() is None]:
        proc.stop()
    r = redis.Redis.from_url(REDIS_URL)
    key = Keys(module_namespace).batch(batch.id)
    record = json.loads(r.hget(key, "b"))  # type: ignore[arg-type]
    record["expires_at"] = int(time.time())
    r.hset(key, "b", json.dumps(record))
    stack.batch_worker()
    done = wait_until(client, batch.id, "expired", timeout_s=30)
    assert done.expired_at and done.request_counts.total == 300
    output, errors = by_custom_id(client, done.output_file_id), by_custom_id(client, done.error_file_id)
    assert len(output) + len(errors) == 300 and not set(output) & set(errors)  # every line, once
    assert {line["error"]["code"] for line in errors.values()} == {"batch_expired"}
    assert done.request_counts.failed == len(errors) > 0


def test_the_cli_lists_batches_with_their_progress(client: openai.OpenAI, stack: Stack) -> None:
    uploaded = client.files.create(file=("cli.jsonl", jsonl([chat_line("c")])), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_until(client, batch.id, "completed")
    out = subprocess.run([sys.executable, "-m", "broker.cli", "batches", "--config", str(stack.config_path),
                          "--tenant", "test"], capture_output=True, text=True, check=True).stdout
    row = next(line for line in out.splitlines() if batch.id in line)
    assert "completed" in row and "1/1" in row
    as_json = subprocess.run([sys.executable, "-m", "broker.cli", "batches", "--config", str(stack.config_path),
                              "--json"], capture_output=True, text=True, check=True).stdout
    assert batch.id in {json.loads(line)["id"] for line in as_json.splitlines()}
