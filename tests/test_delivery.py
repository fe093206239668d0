"""Delivery under crashes and shutdowns: real worker processes, real signals, real Redis.

Queue timings are shortened (heartbeat 0.3 s, reclaim after 1 s idle) so a
dead worker's jobs move within a second or two.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import httpx
import openai
import pytest
import redis

from broker.keys import Keys
from tests.harness import REDIS_URL, TEST_KEY, next_data, sse_data
from tests.stacks import StackFactory
from workers.providers.mock import mock_words

FAST_RECLAIM = {"heartbeat_interval_s": 0.3, "claim_idle_s": 1.0, "drain_timeout_s": 10}
HEADERS = {"authorization": f"Bearer {TEST_KEY}"}


def ask(client: httpx.AsyncClient, model: str, prompt: str, stream: bool) -> Any:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]}
    return client.post("/chat/completions", json=body)


def streamed_text(sse_body: str) -> tuple[str, bool]:
    """The content of an SSE body, and whether it ended with [DONE] and no error event."""
    import json

    text, clean = "", sse_body.endswith("data: [DONE]\n\n")
    for event in sse_data(sse_body):
        if event.startswith("{"):
            data = json.loads(event)
            if "error" in data:
                clean = False
            for choice in data.get("choices", []):
                text += choice["delta"].get("content") or ""
    return text, clean


def test_sigkill_mid_jobs_every_client_gets_exactly_one_complete_answer(stack_factory: StackFactory) -> None:
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 6, "first_token_delay_s": 1.5}},
                          {"m": [{"provider": "mock", "model": "m"}]}, queue=FAST_RECLAIM)
    base_url = stack.up(("mock", "--concurrency", "100"))
    doomed = stack.workers[0]

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, headers=HEADERS, timeout=60) as client:
            requests = [asyncio.ensure_future(ask(client, "m", f"crash {i}", stream=i % 5 == 0)) for i in range(100)]
            await asyncio.sleep(0.7)  # all 100 are now running on the doomed worker
            doomed.kill()
            stack.worker("mock", "--concurrency", "100")  # the survivor reclaims them
            return await asyncio.gather(*requests)

    responses = asyncio.run(main())
    for i, resp in enumerate(responses):
        assert resp.status_code == 200, (i, resp.text)
        expected = " ".join(mock_words(f"crash {i}", 6))
        if i % 5 == 0:
            text, clean = streamed_text(resp.text)
            assert clean and text == expected, i  # complete, and not a word twice
        else:
            assert resp.json()["choices"][0]["message"]["content"] == expected, i
    assert len({r.json()["id"] for i, r in enumerate(responses) if i % 5}) == 80
    # The ledger counts each job once: delivered twice (the first worker died mid-call), ended once.
    end = time.monotonic() + 5
    while (total := httpx.get(f"{base_url}/usage", headers=HEADERS).json()["total"])["requests"] < 100:
        assert time.monotonic() < end, total
        time.sleep(0.05)
    time.sleep(0.3)  # a late double count would land now
    total = httpx.get(f"{base_url}/usage", headers=HEADERS).json()["total"]
    assert (total["requests"], total["errors"]) == (100, 0)


def test_stream_whose_worker_dies_mid_stream_ends_with_an_error_not_a_restart(stack_factory: StackFactory) -> None:
    # The survivor may reclaim and run the job after its client has left with the error: neither the
    # API (by the default 5 s resume grace) nor the survivor (by draining it) need hold its shutdown for it.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 30, "token_delay_s": 0.1}},
                          {"m": [{"provider": "mock", "model": "m"}]}, queue={**FAST_RECLAIM, "drain_timeout_s": 0},
                          server={"stream_resume_grace_s": 0})
    client = openai.OpenAI(base_url=stack.up("mock"), api_key=TEST_KEY, max_retries=0)
    doomed = stack.workers[0]
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "long story"}]
        ):
            received.append(chunk.choices[0].delta.content or "")
            if len(received) == 4:
                doomed.kill()
                stack.worker("mock")
    assert "stopped mid-stream" in info.value.message
    words = mock_words("long story", 30)
    # What arrived is a clean prefix of the one answer: nothing repeated, nothing spliced.
    assert "".join(received) == "".join([words[0]] + [" " + w for w in words[1:len(received) - 1]])


def test_a_stream_restarted_after_its_worker_died_is_cancelled_at_once_not_after_the_grace(
        stack_factory: StackFactory, namespace: str) -> None:
    # Issue 24: the client is told `reply_lost` and holds events of the attempt that died, so no client
    # can resume the re-delivered one. Its upstream work (20 s here) must stop at once, not run on for
    # the 5 s resume grace.
    from broker.money.ledger import record_decoder

    stack = stack_factory({"mock": {"kind": "mock", "tokens": 200, "token_delay_s": 0.1}},
                          {"m": [{"provider": "mock", "model": "m"}]}, queue={**FAST_RECLAIM, "drain_timeout_s": 0},
                          server={"stream_resume_grace_s": 5})
    base_url = stack.up("mock")
    doomed = stack.workers[0]
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "long story"}]}
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, headers=HEADERS, timeout=30) as resp:
        job_id = resp.headers["x-request-id"].removeprefix("req_")
        chunks, error = 0, None
        for data in (line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")):
            if '"error"' in data:
                error = data
                break
            chunks += 1
            if chunks == 4:
                doomed.kill()
                stack.worker("mock")
    told_at = time.time()
    assert error is not None and '"reply_lost"' in error and "stopped mid-stream" in error

    r = redis.Redis.from_url(REDIS_URL)
    log = Keys(namespace).usage_log()
    end = time.monotonic() + 10
    while not (records := [record_decoder.decode(f[b"r"]) for _, f in r.xrange(log)
                           if record_decoder.decode(f[b"r"]).job_id == job_id]):
        assert time.monotonic() < end, "the restarted attempt never ended"
        time.sleep(0.05)
    [record] = records  # counted once, by the attempt that ended it
    assert record.outcome == "cancelled"
    assert record.at - told_at < 2.0, f"the restarted attempt ran {record.at - told_at:.1f} s after its client left"
    assert record.output_tokens < 100  # cut well before its 200 tokens


def test_job_failing_on_every_attempt_goes_to_the_dead_letter_stream(stack_factory: StackFactory,
                                                                      namespace: str) -> None:
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3, "first_token_delay_s": 1.5}},
                          {"m": [{"provider": "mock", "model": "m"}]}, queue={**FAST_RECLAIM, "max_attempts": 1})
    client = openai.OpenAI(base_url=stack.up("mock"), api_key=TEST_KEY, max_retries=0)
    doomed = stack.workers[0]
    threading.Timer(0.6, lambda: (doomed.kill(), stack.worker("mock"))).start()
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "unlucky"}])
    assert info.value.code == "attempts_exhausted"
    assert info.value.response.headers["x-should-retry"] == "false"  # a job that kills workers stays dead
    dead = redis.Redis.from_url(REDIS_URL).xrange(Keys(namespace).dead_letters("mock"))
    assert len(dead) == 1 and b"every attempt" in dead[0][1][b"error"]


def test_sigterm_worker_finishes_its_jobs_and_takes_no_more(stack_factory: StackFactory) -> None:
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3, "first_token_delay_s": 1.0}},
                          {"m": [{"provider": "mock", "model": "m"}]}, queue=FAST_RECLAIM)
    base_url = stack.up(("mock", "--concurrency", "10"))
    leaving = stack.workers[0]

    async def main() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=base_url, headers=HEADERS, timeout=60) as client:
            first = [asyncio.ensure_future(ask(client, "m", f"a{i}", False)) for i in range(10)]
            await asyncio.sleep(0.4)
            leaving.popen.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            later = [asyncio.ensure_future(ask(client, "m", f"b{i}", False)) for i in range(5)]
            done_first = await asyncio.gather(*first)
            assert await asyncio.to_thread(leaving.popen.wait, 20) == 0
            assert not any(r.done() for r in later)  # the leaving worker took none of them
            stack.worker("mock")
            return done_first, await asyncio.gather(*later)

    first, later = asyncio.run(main())
    assert [r.status_code for r in first + later] == [200] * 15
    assert "worker stopped after 10 jobs" in leaving.output()


def test_sigterm_api_lets_open_streams_finish(stack_factory: StackFactory) -> None:
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 15, "token_delay_s": 0.1}},
                          {"m": [{"provider": "mock", "model": "m"}]})
    base_url = stack.up("mock")
    api = stack.procs[-1]
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "finish me"}]}
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, headers=HEADERS, timeout=30) as resp:
        lines = resp.iter_lines()
        assert next_data(lines)
        api.popen.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # no new connections once shutting down
            httpx.get(f"{base_url}/models", headers=HEADERS, timeout=2)
        rest = "\n".join(lines)
    assert rest.rstrip().endswith("data: [DONE]")
    # uvicorn re-raises the signal once shut down, so the exit status is "terminated by SIGTERM".
    assert api.popen.wait(20) in (0, -signal.SIGTERM)
    assert "Traceback" not in api.output()


def test_redis_forgetting_its_scripts_is_survived(stack_factory: StackFactory) -> None:
    # A Redis restart (or SCRIPT FLUSH) drops every loaded script; EVALSHA then fails with NOSCRIPT.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]})
    client = openai.OpenAI(base_url=stack.up("mock"), api_key=TEST_KEY, max_retries=0)
    ask_once = lambda: client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])  # noqa: E731
    assert ask_once().choices[0].message.content
    redis.Redis.from_url(REDIS_URL).script_flush()
    assert ask_once().choices[0].message.content == " ".join(mock_words("hi", 3))


def test_a_heartbeat_outlives_a_stream_retired_under_it(namespace: str) -> None:
    # The heartbeat snapshots the entries a worker holds; finish.lua may delete an emptied stream (and its
    # consumer group) before the XCLAIM that refreshes them runs. That is no failure: nothing is left there.
    from redis.asyncio import Redis

    from broker.queue.streams import heartbeat

    async def beat() -> int:
        client = Redis.from_url(REDIS_URL)
        keys = Keys(namespace)
        retired = keys.queue("mock", "default", "gone")
        await heartbeat(client, keys, "mock", "worker-1", {retired: [b"1-0"]})
        live = int(await client.zcard(keys.workers("mock")))
        await client.aclose()
        return live

    assert asyncio.run(beat()) == 1
