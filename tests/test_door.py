"""The door (api/door.py): past its cap, or while its event loop lags (api/loop_lag.py), an API process
answers 503 + Retry-After at once, in each protocol's shape, never on the routes an operator needs,
and takes requests again once streams end or the lag falls."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from api.door import Door
from api.loop_lag import INTERVAL_S, MAX_RETRY_S, LoopLag
from broker.errors import Overloaded
from tests.harness import TEST_KEY, next_data
from tests.stacks import StackFactory

HEADERS = {"authorization": f"Bearer {TEST_KEY}"}
CAP = 4
STREAM = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hold the line"}]}


# ---------------------------------------------------------------- the middleware alone


class Gate:
    """A fake ASGI app whose requests stay in flight until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        await self.release.wait()
        if scope["path"] == "/boom":
            raise RuntimeError("boom")


def refused(scope: Scope, err: Overloaded) -> Response:
    return Response(err.code or "", status_code=err.status)


async def call(door: Door, path: str) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    with contextlib.suppress(RuntimeError):
        await door({"type": "http", "path": path, "method": "POST", "headers": []}, receive, send)
    return sent


async def test_the_count_falls_when_the_app_returns_or_raises_and_refusals_never_reach_it() -> None:
    gate = Gate()
    door = Door(gate, max_in_flight=2, max_new_per_s=0, lag=LoopLag(0), refuse=refused)
    held = [asyncio.ensure_future(call(door, path)) for path in ("/v1/chat/completions", "/boom")]
    await asyncio.sleep(0)
    assert door.in_flight == 2
    third = await call(door, "/v1/chat/completions")
    assert third[0]["status"] == 503 and third[1]["body"] == b"server_overloaded"
    assert gate.calls == 2 and door.in_flight == 2
    health = asyncio.ensure_future(call(door, "/healthz"))  # never shed: it reaches the app
    await asyncio.sleep(0)
    assert gate.calls == 3
    gate.release.set()
    await asyncio.gather(*held, health)
    assert door.in_flight == 0


async def test_past_its_rate_the_door_refuses_until_the_bucket_refills() -> None:
    gate = Gate()
    gate.release.set()
    door = Door(gate, max_in_flight=0, max_new_per_s=5, lag=LoopLag(0), refuse=refused)
    statuses = [(await call(door, "/v1/messages") or [{"status": 200}])[0]["status"] for _ in range(8)]
    assert statuses == [200] * 5 + [503] * 3
    assert (await call(door, "/admin/keys")) == []  # never shed, rate or not
    await asyncio.sleep(0.25)  # a fifth of a second: one more token
    assert (await call(door, "/v1/messages")) == []


def lagging(lag: LoopLag, late_s: float, for_s: float) -> None:
    """Feed `lag` samples of a loop that runs `late_s` late, for `for_s` seconds of its time."""
    for _ in range(round(for_s / (INTERVAL_S + late_s))):
        lag.observe(late_s, INTERVAL_S + late_s)


def test_the_lag_sheds_on_sustained_lateness_not_on_one_spike_and_does_not_flap() -> None:
    lag = LoopLag(100)
    lagging(lag, 0.012, 5)  # a busy loop under ordinary load: well below
    assert not lag.shedding
    lag.observe(0.1, 0.11)  # one 100 ms pause (a collection, one long callback): smoothed away
    assert not lag.shedding and lag.lag_s < 0.05
    lagging(lag, 0.2, 0.5)  # a burst: 200 ms late, sustained, crosses within half a second
    assert lag.shedding and 1 < lag.retry_after_s() < MAX_RETRY_S
    lagging(lag, 0.07, 2)  # back under the threshold but above half of it: still shedding
    assert lag.shedding and 0.05 < lag.lag_s < 0.1
    lagging(lag, 0.002, 1)  # below half: takes requests again
    assert not lag.shedding and lag.retry_after_s() == 1
    lagging(lag, 5, 60)
    assert lag.retry_after_s() == MAX_RETRY_S  # never sent away for good


def test_with_shed_lag_ms_0_the_lag_is_measured_but_nothing_is_shed() -> None:
    lag = LoopLag(0)
    lagging(lag, 1, 5)
    assert lag.lag_s > 0.9 and not lag.shedding


async def test_the_probe_measures_how_late_its_timer_runs() -> None:
    lag = LoopLag(100)
    probe = asyncio.ensure_future(lag.run())
    await asyncio.sleep(INTERVAL_S / 2)  # the probe's timer is set: now hold the loop past it
    time.sleep(0.2)
    await asyncio.sleep(INTERVAL_S * 2)
    probe.cancel()
    assert lag.lag_s > 0.01  # one 190 ms late sample, smoothed over half a second


async def test_while_the_loop_lags_the_door_refuses_with_a_retry_after_from_the_lag_but_never_an_operator() -> None:
    gate = Gate()
    gate.release.set()
    lag = LoopLag(100)
    door = Door(gate, max_in_flight=0, max_new_per_s=0, lag=lag, refuse=lambda scope, err: Response(
        f"{err.code} {err.retry_after_s}", status_code=err.status))
    lagging(lag, 0.5, 2)
    sent = await call(door, "/v1/chat/completions")
    assert sent[0]["status"] == 503 and sent[1]["body"] == f"server_overloaded {lag.retry_after_s()}".encode()
    assert lag.retry_after_s() > 2  # half a second late against 100 ms: a longer back-off than 1 s
    assert await call(door, "/metrics") == [] and await call(door, "/admin/keys") == [] and gate.calls == 2
    lagging(lag, 0.001, 3)
    assert await call(door, "/v1/chat/completions") == [] and gate.calls == 3


# ---------------------------------------------------------------- one API process, over real HTTP


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory) -> str:
    stack = module_stack_factory(
        {"mock": {"kind": "mock", "tokens": 6, "token_delay_s": 0.3}},  # ~1.5 s streams
        {"m": [{"provider": "mock", "model": "m"}]},
        server={"max_in_flight": CAP, "stream_first_byte_hold_s": 0, "stream_resume_grace_s": 0},
    )
    return stack.up("mock")


def in_flight(base_url: str) -> float:
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics").text
    found = re.search(r"^llm_broker_api_in_flight (\S+)$", text, re.M)
    assert found, text
    return float(found.group(1)) - 1  # this scrape is in flight too


def open_streams(base_url: str, streams: contextlib.ExitStack, n: int) -> list[tuple[httpx.Response, Iterator[str]]]:
    """`n` streams past their first event, each with its line iterator (a dropped iterator closes its
    response: the client would have left)."""
    opened = []
    for _ in range(n):
        resp = streams.enter_context(httpx.stream("POST", f"{base_url}/chat/completions", json=STREAM,
                                                  headers=HEADERS, timeout=10))
        assert resp.status_code == 200
        lines = resp.iter_lines()
        next_data(lines)
        opened.append((resp, lines))
    return opened


def test_past_its_cap_a_process_refuses_at_once_in_each_protocols_shape(base_url: str) -> None:
    root = base_url.removesuffix("/v1")
    with contextlib.ExitStack() as streams:
        held = open_streams(base_url, streams, CAP)
        assert len(held) == CAP
        started = time.perf_counter()
        openai_style = httpx.post(f"{base_url}/chat/completions", json=STREAM, headers=HEADERS)
        took = time.perf_counter() - started
        assert openai_style.status_code == 503, openai_style.text
        assert took < 0.5  # not after a stream's 1.5 s: refused at the door
        assert openai_style.headers["retry-after"] == "1" and openai_style.headers["retry-after-ms"] == "1000"
        assert openai_style.headers["x-request-id"].startswith("req_")
        error: dict[str, Any] = openai_style.json()["error"]
        assert error["code"] == "server_overloaded" and error["type"] == "service_unavailable_error"

        anthropic_style = httpx.post(f"{base_url}/messages", json={}, headers={"x-api-key": TEST_KEY})
        assert anthropic_style.status_code == 529
        assert anthropic_style.headers["retry-after"] == "1"
        body = anthropic_style.json()
        assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"

        assert httpx.get(f"{root}/healthz").status_code == 200  # an operator still sees the process
        metrics = httpx.get(f"{root}/metrics").text
        assert re.search(r'^llm_broker_shed_total\{reason="in_flight"\} [1-9]', metrics, re.M)
        assert in_flight(base_url) == CAP


def wait_until_free(base_url: str, timeout_s: float = 5) -> float:
    """The process's count once its streams are gone (a left stream is seen gone at its next write)."""
    end = time.monotonic() + timeout_s
    while (count := in_flight(base_url)) and time.monotonic() < end:
        time.sleep(0.05)
    return count


def test_streams_that_end_or_are_dropped_free_their_places(base_url: str) -> None:
    assert wait_until_free(base_url) == 0  # the streams an earlier test left
    with contextlib.ExitStack() as streams:
        opened = open_streams(base_url, streams, CAP)
        for resp, _ in opened[:2]:  # these clients leave mid-stream...
            resp.close()
        for _, lines in opened[2:]:  # ...these read to the end
            assert list(lines)[-2:] == ["data: [DONE]", ""]
    assert wait_until_free(base_url) == 0
    with contextlib.ExitStack() as streams:  # the whole cap again, and nothing refused
        assert len(open_streams(base_url, streams, CAP)) == CAP
