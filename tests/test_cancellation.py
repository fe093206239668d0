"""A client that leaves cancels its job; a job past its deadline never reaches the upstream.

The fake upstream records the moment it sees its connection closed
(`DISCONNECTS`), so "aborted promptly" is measured where the tokens are spent.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.fakes import openai_upstream
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import TEST_KEY, next_data
from tests.stacks import StackFactory

HEADERS = {"authorization": f"Bearer {TEST_KEY}"}


pytestmark = pytest.mark.upstream(chunks=4)


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory, upstream: UpstreamServer) -> str:
    # One job at a time, so a second request waits in the queue behind the first.
    stack = module_stack_factory(
        {"up": {"kind": "openai", "base_url": upstream.base_url, "concurrency": 1}},
        {"hang": [{"provider": "up", "model": "hang-stream"}], "slow": [{"provider": "up", "model": "slow"}],
         "quick": [{"provider": "up", "model": "fake-model"}]},
        # A dropped stream is cancelled at once, not after a grace for its client to resume it
        # (tests/test_resumable_streams.py proves the grace).
        server={"stream_resume_grace_s": 0},
    )
    return str(stack.up("up"))


def wait_for_disconnect(since: int, timeout_s: float = 3.0) -> float:
    end = time.monotonic() + timeout_s
    while len(openai_upstream.DISCONNECTS) <= since:
        assert time.monotonic() < end, "the upstream request was never aborted"
        time.sleep(0.01)
    return openai_upstream.DISCONNECTS[-1]


def chat(model: str, stream: bool, marker: str) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": marker}]}


def sent_upstream(upstream: UpstreamServer, marker: str) -> int:
    return sum(1 for r in upstream.requests if r.body and marker in str(r.body.get("messages")))


def test_leaving_a_stream_aborts_the_upstream_call_within_a_second(base_url: str) -> None:
    seen = len(openai_upstream.DISCONNECTS)
    with httpx.stream("POST", f"{base_url}/chat/completions", json=chat("hang", True, "bye"),
                      headers=HEADERS, timeout=30) as resp:
        assert next_data(resp.iter_lines())  # the upstream is now stalled mid-stream
        left = time.time()
    assert wait_for_disconnect(seen) - left < 1.0


def test_leaving_a_non_streaming_request_aborts_the_upstream_call_within_a_second(base_url: str) -> None:
    seen = len(openai_upstream.DISCONNECTS)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/chat/completions", json=chat("slow", False, "impatient"), headers=HEADERS,
                   timeout=httpx.Timeout(30, read=0.5))
    left = time.time()
    assert wait_for_disconnect(seen) - left < 1.0


def test_a_queued_job_whose_client_left_is_skipped(base_url: str, upstream: UpstreamServer) -> None:
    with httpx.stream("POST", f"{base_url}/chat/completions", json=chat("hang", True, "blocker"),
                      headers=HEADERS, timeout=30) as resp:
        lines = resp.iter_lines()  # kept: dropping the iterator would close the response
        assert next_data(lines)  # the only slot is taken
        with pytest.raises(httpx.ReadTimeout):  # this one waits in the queue, and its client gives up
            httpx.post(f"{base_url}/chat/completions", json=chat("quick", False, "gave-up"), headers=HEADERS,
                       timeout=httpx.Timeout(30, read=0.3))
        time.sleep(0.2)
    # The slot is free again: the next job runs, the abandoned one never does.
    done = httpx.post(f"{base_url}/chat/completions", json=chat("quick", False, "after"), headers=HEADERS)
    assert done.status_code == 200
    assert sent_upstream(upstream, "after") == 1
    assert sent_upstream(upstream, "gave-up") == 0


def test_a_job_whose_deadline_passes_in_the_queue_never_reaches_the_upstream(
    base_url: str, upstream: UpstreamServer
) -> None:
    with httpx.stream("POST", f"{base_url}/chat/completions", json=chat("hang", True, "holder"),
                      headers=HEADERS, timeout=30) as resp:
        lines = resp.iter_lines()
        assert next_data(lines)
        started = time.monotonic()
        late = httpx.post(f"{base_url}/chat/completions", json=chat("quick", False, "too-late"),
                          headers={**HEADERS, "x-request-timeout": "0.5"}, timeout=10)
        assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
        assert time.monotonic() - started < 2
    done = httpx.post(f"{base_url}/chat/completions", json=chat("quick", False, "next"), headers=HEADERS)
    assert done.status_code == 200  # by now the worker has pulled and dropped the expired job
    assert sent_upstream(upstream, "too-late") == 0
