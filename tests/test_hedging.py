"""Hedged requests: a slow first deployment is raced by a second, the first answer wins, the loser's
upstream call is aborted. The official SDK as the client, fake upstreams that count their calls."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from broker.config import ConfigError, validate
from broker.queue.jobs import Job
from broker.queue.payloads import EmbeddingPayload
from broker.wire import EmbeddingRequest
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import REDIS_URL, TEST_KEY
from tests.stacks import Stack, StackFactory
from workers.hedging import MIN_SAMPLES, LatencyWindow

MODES = ("stream", "json")


@pytest.fixture(scope="module")
def slow() -> Iterator[UpstreamServer]:
    with UpstreamServer(chunks=3) as server:
        yield server


@pytest.fixture(scope="module")
def quick() -> Iterator[UpstreamServer]:
    with UpstreamServer(chunks=3) as server:
        yield server


@pytest.fixture(scope="module")
def stack(module_stack_factory: StackFactory, slow: UpstreamServer, quick: UpstreamServer) -> Stack:
    def hedged(first: str, second: str, after: int | str = 100) -> dict[str, Any]:
        return {"hedge_after_ms": after, "deployments": [{"provider": "first", "model": first},
                                                         {"provider": "second", "model": second}]}
    stack = module_stack_factory(
        {"first": {"kind": "openai", "base_url": slow.base_url},
         "second": {"kind": "openai", "base_url": quick.base_url},
         "impatient": {"kind": "openai", "base_url": slow.base_url, "timeout_s": 1, "max_retries": 0}},
        {  # each scenario its own upstream model ids ("hold@x" behaves as "hold"): its own circuits
            **{f"hedged-{mode}": hedged(f"hold@{mode}", f"fake-model@{mode}") for mode in MODES},
            **{f"prompt-{mode}": hedged(f"fake-model@p{mode}", f"fake-model@p{mode}", 500) for mode in MODES},
            **{f"hedge-fails-{mode}": hedged(f"hold@f{mode}", f"fail-500@{mode}") for mode in MODES},
            "all-fail": {"hedge_after_ms": 100, "deployments": [
                {"provider": "impatient", "model": "slow@all"}, {"provider": "second", "model": "fail-500@all"}]},
            "stalled": hedged("slow@stalled", "slow@stalled"),
            "p95": hedged("fake-model@p95", "fake-model@p95", "p95"),
        },
    )
    stack.up("first", "second", "impatient")
    return stack


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> str:
    return str(stack.base_url)


def calls(upstream: UpstreamServer, marker: str) -> int:
    return sum(1 for r in upstream.requests if r.body and marker in str(r.body.get("messages")))


def abandoned(upstream: UpstreamServer) -> int:
    return int(httpx.get(f"{upstream.base_url}/fake/stats").json()["abandoned"])


def ask(client: openai.OpenAI, model: str, marker: str, stream: bool) -> tuple[str, httpx.Headers]:
    messages: Any = [{"role": "user", "content": marker}]
    if stream:
        events = client.chat.completions.create(model=model, messages=messages, stream=True)
        chunks = list(events)
        assert chunks[-1].choices[0].finish_reason == "stop"
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), events.response.headers
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)
    return raw.parse().choices[0].message.content or "", raw.headers


def until(condition: Any, what: str, timeout_s: float = 5) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, what
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [True, False])
def test_a_slow_first_deployment_is_raced_and_the_quicker_answer_wins(
    client: openai.OpenAI, slow: UpstreamServer, quick: UpstreamServer, stream: bool
) -> None:
    model, marker = f"hedged-{MODES[0] if stream else MODES[1]}", f"race-{stream}"
    left_before = abandoned(slow)
    started = time.monotonic()
    text, headers = ask(client, model, marker, stream)
    took = time.monotonic() - started
    assert text and took < 0.9  # the first deployment holds its answer for 1 s
    assert headers["x-llm-broker-deployment"] == f"second/fake-model@{MODES[0] if stream else MODES[1]}"
    assert headers["x-llm-broker-attempts"] == "2"  # both calls were made
    assert (calls(slow, marker), calls(quick, marker)) == (1, 1)
    # The loser's upstream call is aborted, not left to run (and bill) to its end.
    until(lambda: abandoned(slow) > left_before, "the losing attempt's upstream call was never closed")


@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_in_time_is_never_hedged(client: openai.OpenAI, slow: UpstreamServer, quick: UpstreamServer,
                                           stream: bool) -> None:
    marker = f"in-time-{stream}"
    text, headers = ask(client, f"prompt-{MODES[0] if stream else MODES[1]}", marker, stream)
    assert text and headers["x-llm-broker-attempts"] == "1"
    assert headers["x-llm-broker-deployment"].startswith("first/")
    time.sleep(0.6)  # past hedge_after_ms: a hedge armed and not cancelled would have fired by now
    assert (calls(slow, marker), calls(quick, marker)) == (1, 0)


@pytest.mark.parametrize("stream", [True, False])
def test_a_hedge_that_fails_leaves_the_first_attempt_to_answer(
    client: openai.OpenAI, slow: UpstreamServer, quick: UpstreamServer, stream: bool
) -> None:
    marker = f"hedge-fails-{stream}"
    text, headers = ask(client, f"hedge-fails-{MODES[0] if stream else MODES[1]}", marker, stream)
    assert text  # one answer, no error, though the hedge failed first
    assert headers["x-llm-broker-deployment"].startswith("first/hold@")
    assert (calls(slow, marker), calls(quick, marker)) == (1, 1)


def test_when_both_attempts_fail_the_client_gets_one_error(client: openai.OpenAI, slow: UpstreamServer,
                                                            quick: UpstreamServer) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="all-fail", messages=[{"role": "user", "content": "both-fail"}])
    # The hedge failed at once and quit; the first attempt, last in the race, timed out after 1 s and answers.
    assert info.value.status_code == 504
    assert 0.9 < time.monotonic() - started < 5
    assert (calls(slow, "both-fail"), calls(quick, "both-fail")) == (1, 1)


def test_a_client_that_leaves_cancels_both_attempts(base_url: str, slow: UpstreamServer,
                                                    quick: UpstreamServer) -> None:
    left_before = abandoned(slow), abandoned(quick)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                   json={"model": "stalled", "messages": [{"role": "user", "content": "stalled"}]},
                   timeout=httpx.Timeout(10, read=0.6))
    # Hedged at 100 ms: both deployments stall, and both calls are aborted once the client leaves.
    assert (calls(slow, "stalled"), calls(quick, "stalled")) == (1, 1)
    until(lambda: (abandoned(slow), abandoned(quick)) == (left_before[0] + 1, left_before[1] + 1),
          "an attempt outlived its client")


def test_a_race_leaves_only_keys_that_expire(client: openai.OpenAI, stack: Stack) -> None:
    ask(client, "hedged-json", "race-keys", False)
    config = validate(__import__("yaml").safe_load(stack.config_path.read_text()), source="test")
    r = redis.Redis.from_url(REDIS_URL)
    races = list(r.scan_iter(match=f"{config.namespace}:race:*"))
    assert races and all(0 < r.pttl(key) for key in races)


def test_p95_hedging_waits_for_measures_then_tracks_the_tail(client: openai.OpenAI, quick: UpstreamServer) -> None:
    window = LatencyWindow()
    job = Job(id="j", tenant="t", model="m", provider="p", upstream_model="u", reply_to="", created=0, deadline=1,
              payload=EmbeddingPayload(EmbeddingRequest(model="m", input="x")))
    for i in range(MIN_SAMPLES - 1):
        window.observe(job, 0.01)
    assert window.p95(job) is None  # too few measures: no hedging on a guess
    for i in range(100 - MIN_SAMPLES + 1):
        window.observe(job, 0.01)
    for _ in range(10):
        window.observe(job, 3.0)  # a slow tail of 10 in 110
    assert window.p95(job) == 3.0
    # Through the broker: a p95 group answers, and never hedges before it has measured anything.
    _, headers = ask(client, "p95", "p95", False)
    assert headers["x-llm-broker-attempts"] == "1" and calls(quick, "p95") == 0


def test_hedging_needs_a_second_provider() -> None:
    with pytest.raises(ConfigError, match="another provider"):
        validate({"providers": {"a": {"kind": "mock"}},
                  "models": {"m": {"hedge_after_ms": 50, "deployments": [{"provider": "a", "model": "x"},
                                                                         {"provider": "a", "model": "y"}]}},
                  "tenants": {}}, source="test")
