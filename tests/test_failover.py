"""Failover down a model's deployments: the official SDK as the client, fake upstreams that count calls."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from broker.cli.embedded_redis import free_port
from broker.config import hash_key
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import TEST_KEY
from tests.stacks import StackFactory

MODES = ("stream", "json")
NARROW_KEY = "sk-narrow-tenant-0001"


@pytest.fixture(scope="module")
def primary() -> Iterator[UpstreamServer]:
    with UpstreamServer(chunks=3) as server:
        yield server


@pytest.fixture(scope="module")
def secondary() -> Iterator[UpstreamServer]:
    with UpstreamServer(chunks=3) as server:
        yield server


@pytest.fixture(scope="module")
def locked() -> Iterator[UpstreamServer]:
    with UpstreamServer(chunks=3, api_key="sk-the-right-key") as server:
        yield server


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory, primary: UpstreamServer, secondary: UpstreamServer,
             locked: UpstreamServer) -> str:
    backup = {"provider": "second", "model": "fake-model"}
    stack = module_stack_factory(
        {"first": {"kind": "openai", "base_url": primary.base_url},
         "second": {"kind": "openai", "base_url": secondary.base_url},
         "nowhere": {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "connect_timeout_s": 1},
         "mock-a": {"kind": "mock", "tokens": 2}, "mock-b": {"kind": "mock", "tokens": 2},
         "wrong-key": {"kind": "openai", "base_url": locked.base_url, "api_key": "sk-a-stale-key"},
         "impatient": {"kind": "openai", "base_url": primary.base_url, "timeout_s": 1}},
        {  # each scenario its own upstream model ids ("fail-503@b" fails as "fail-503"): its own circuits
            **{f"limited-{mode}": [{"provider": "first", "model": f"fail-429@{mode}"}, backup] for mode in MODES},
            **{f"overloaded-{mode}": [{"provider": "first", "model": f"fail-503@{mode}"}, backup] for mode in MODES},
            **{f"refusing-{mode}": [{"provider": "nowhere", "model": mode}, backup] for mode in MODES},
            "bad-request": [{"provider": "first", "model": "fail-400"}, backup],
            "all-down": [{"provider": "first", "model": "fail-500@all"}, {"provider": "nowhere", "model": "m"},
                         {"provider": "second", "model": "fail-503@all"}],
            "all-limited": [{"provider": "first", "model": "fail-429@all"},
                            {"provider": "second", "model": "fail-429@all"}],
            "plain": [backup],
            "flaky-alone": [{"provider": "first", "model": "flaky-429"}],
            "down-alone": [{"provider": "first", "model": "fail-503@alone"}],
            "limited-alone": [{"provider": "first", "model": "fail-429@alone"}],
            "stalls-after-failover": [{"provider": "first", "model": "fail-503@stall"},
                                      {"provider": "second", "model": "slow"}],
            "with-fallbacks": {"deployments": [{"provider": "first", "model": "fail-503@grp"}],
                               "fallbacks": ["plain"]},
            "client-primary": [{"provider": "first", "model": "fail-503@client"}],
            "capped": [{"provider": "first", "model": "fake-model@capped", "rpm": 5}, backup],
            "misconfigured": [{"provider": "wrong-key", "model": "fake-model"}, backup],
            "silent": [{"provider": "impatient", "model": "slow"}, backup],
            # Configured windows overstate the upstream's real one (16): routing lets the prompt through.
            "growing": [{"provider": "first", "model": "small-context", "capabilities": {"max_context_tokens": 64}},
                        {"provider": "first", "model": "fake-model@mid", "capabilities": {"max_context_tokens": 48}},
                        {**backup, "capabilities": {"max_context_tokens": 128000}}],
            "no-larger": [{"provider": "first", "model": "small-context", "capabilities": {"max_context_tokens": 64}},
                          {"provider": "second", "model": "fake-model@same", "capabilities": {"max_context_tokens": 64}}],
            "weighted": {"strategy": "weighted", "deployments": [
                {"provider": "mock-a", "model": "a", "weight": 3}, {"provider": "mock-b", "model": "b", "weight": 1}]},
        },
        tenants={"test": {"keys": [hash_key(TEST_KEY)]},
                 "narrow": {"keys": [hash_key(NARROW_KEY)], "models": ["client-primary"]}},
    )
    return str(stack.up("first", "first", "second", "nowhere", "mock-a", "mock-b", "wrong-key", "impatient"))


def calls(upstream: UpstreamServer, marker: str) -> int:
    return sum(1 for r in upstream.requests if r.body and marker in str(r.body.get("messages")))


@pytest.mark.parametrize("group", ["limited", "overloaded", "refusing"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_first_deployment_is_replaced_by_the_next_unnoticed(
    client: openai.OpenAI, primary: UpstreamServer, secondary: UpstreamServer, group: str, stream: bool
) -> None:
    model = f"{group}-{MODES[0] if stream else MODES[1]}"
    marker = f"{model}-{stream}"
    messages = [{"role": "user", "content": marker}]
    if stream:
        events = client.chat.completions.create(model=model, messages=messages, stream=True)  # type: ignore[arg-type]
        headers = events.response.headers
        chunks = list(events)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)  # type: ignore[arg-type]
        headers, completion = raw.headers, raw.parse()
        text = completion.choices[0].message.content or ""
        assert completion.model == model
    assert text
    assert headers["x-llm-broker-deployment"] == "second/fake-model"
    assert headers["x-llm-broker-attempts"] == "2"
    assert calls(primary, marker) == (0 if group == "refusing" else 1)  # one call, no retry storm
    assert calls(secondary, marker) == 1


def test_the_clients_own_error_is_returned_as_is_without_failover(
    client: openai.OpenAI, primary: UpstreamServer, secondary: UpstreamServer
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="bad-request", messages=[{"role": "user", "content": "bad one"}])
    assert info.value.status_code == 400 and "injected failure" in info.value.message
    assert (calls(primary, "bad one"), calls(secondary, "bad one")) == (1, 0)


def test_when_every_deployment_fails_one_error_lists_each_attempt(
    client: openai.OpenAI, primary: UpstreamServer, secondary: UpstreamServer
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="all-down", messages=[{"role": "user", "content": "doomed"}])
    assert info.value.status_code == 503  # the last failure's status
    message = info.value.message
    # Each deployment once, and the last one left retried once (max_retries 1): bounded, and all told.
    assert "All 4 attempts failed" in message
    assert "first/fail-500@all: 502" in message and "nowhere/m: 502" in message
    assert "second/fail-503@all: 503" in message
    assert (calls(primary, "doomed"), calls(secondary, "doomed")) == (1, 2)


def test_when_every_deployment_is_rate_limited_the_answer_is_a_429_with_the_soonest_retry(
    client: openai.OpenAI
) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="all-limited", messages=[{"role": "user", "content": "busy"}])
    assert "All 3 attempts failed" in info.value.message
    assert info.value.response.headers["retry-after"] == "1"


def test_a_plain_answer_names_its_deployment(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="plain", messages=[{"role": "user", "content": "hi"}])
    assert (raw.headers["x-llm-broker-deployment"], raw.headers["x-llm-broker-attempts"]) == ("second/fake-model", "1")


def test_a_client_that_leaves_after_a_failover_cancels_the_job_where_it_went(
    base_url: str, secondary: UpstreamServer
) -> None:
    # The job failed over from `first` to `second`, where it stalls: leaving must abort it *there*.
    import httpx

    from tests.fakes import openai_upstream

    since = len(openai_upstream.DISCONNECTS)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                   json={"model": "stalls-after-failover", "messages": [{"role": "user", "content": "stall"}]},
                   timeout=httpx.Timeout(10, read=1.0))
    end = time.monotonic() + 3
    while len(openai_upstream.DISCONNECTS) <= since:
        assert time.monotonic() < end, "the upstream call on the deployment failed over to was never aborted"
        time.sleep(0.02)
    assert calls(secondary, "stall") == 1


def test_the_last_deployment_left_is_retried_after_its_retry_after(client: openai.OpenAI,
                                                                   primary: UpstreamServer) -> None:
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="flaky-alone",
                                                           messages=[{"role": "user", "content": "again"}])
    assert raw.parse().choices[0].message.content
    assert time.monotonic() - started >= 1.0  # the upstream's Retry-After was honoured
    assert calls(primary, "again") == 2 and raw.headers["x-llm-broker-attempts"] == "2"


def test_retries_are_bounded_and_the_error_lists_them(client: openai.OpenAI, primary: UpstreamServer) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="down-alone", messages=[{"role": "user", "content": "sick"}])
    assert "All 2 attempts failed" in info.value.message
    assert calls(primary, "sick") == 2  # max_retries 1: no retry storm


def test_a_retry_that_would_cross_the_deadline_is_not_taken(client: openai.OpenAI, primary: UpstreamServer) -> None:
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        client.with_options(timeout=1.5).chat.completions.create(
            model="limited-alone", messages=[{"role": "user", "content": "no time"}])
    assert time.monotonic() - started < 1.0  # answered at once, not after a 1 s wait it could not afford
    assert calls(primary, "no time") == 1


def test_a_groups_fallback_models_follow_its_own_deployments(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="with-fallbacks",
                                                           messages=[{"role": "user", "content": "grp"}])
    assert raw.parse().model == "with-fallbacks"
    assert raw.headers["x-llm-broker-deployment"] == "second/fake-model"


def test_a_clients_own_models_list_is_tried_in_order(client: openai.OpenAI, base_url: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="client-primary", messages=[{"role": "user", "content": "mine"}], extra_body={"models": ["plain"]})
    assert raw.headers["x-llm-broker-deployment"] == "second/fake-model"
    narrow = openai.OpenAI(base_url=base_url, api_key=NARROW_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:  # a model this tenant may not use is refused
        narrow.chat.completions.create(model="client-primary", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"models": ["plain"]})
    assert info.value.body["param"] == "models[0]"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"models": "plain"})


def test_weighted_splits_a_thousand_requests_by_the_weights(base_url: str) -> None:
    import asyncio

    import aiohttp

    # aiohttp rather than httpx: httpx's pool costs O(connections) per request, which made the client,
    # not the broker, the slow end of these thousand requests.
    async def main() -> list[str]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32),
                                         timeout=aiohttp.ClientTimeout(30),
                                         headers={"authorization": f"Bearer {TEST_KEY}"}) as http:
            async def one(i: int) -> str:
                async with http.post(f"{base_url}/chat/completions", json={
                        "model": "weighted", "messages": [{"role": "user", "content": f"w{i}"}]}) as resp:
                    assert resp.status == 200, await resp.text()
                    return resp.headers["x-llm-broker-deployment"]
            return await asyncio.gather(*(one(i) for i in range(1000)))

    served = asyncio.run(main())
    share_a = served.count("mock-a/a") / len(served)
    assert abs(share_a - 0.75) <= 0.05, share_a
    assert served.count("mock-a/a") + served.count("mock-b/b") == 1000


def test_a_deployments_own_rpm_holds_across_worker_processes(base_url: str, primary: UpstreamServer) -> None:
    # rpm 5 on the first deployment, served by two worker processes: 20 requests at once make exactly 5
    # calls to it (its bucket is in Redis); the others go to the next deployment instead of provoking 429s.
    import asyncio

    import httpx

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=30,
                                     headers={"authorization": f"Bearer {TEST_KEY}"}) as http:
            return await asyncio.gather(*(http.post("/chat/completions", json={
                "model": "capped", "messages": [{"role": "user", "content": f"capped {i}"}]}) for i in range(20)))

    answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [200] * 20
    served = [a.headers["x-llm-broker-deployment"] for a in answers]
    assert served.count("first/fake-model@capped") == 5
    assert sum(1 for r in primary.requests if r.body and "capped" in str(r.body.get("messages"))) == 5


def test_a_prompt_too_long_for_a_deployment_moves_to_one_with_a_larger_window(
    client: openai.OpenAI, primary: UpstreamServer, secondary: UpstreamServer
) -> None:
    words = " ".join(f"w{i}" for i in range(30))  # past the upstream's real 16-token window, within config's guess
    raw = client.chat.completions.with_raw_response.create(model="growing",
                                                           messages=[{"role": "user", "content": words}])
    assert raw.headers["x-llm-broker-deployment"] == "second/fake-model"  # the smaller 48-token one skipped
    assert calls(primary, "w29") == 1 and calls(secondary, "w29") == 1
    with pytest.raises(openai.BadRequestError) as info:  # nowhere larger to go: the 400 stands
        client.chat.completions.create(model="no-larger", messages=[{"role": "user", "content": words + " again"}])
    assert info.value.code == "context_length_exceeded"


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_refusing_our_key_or_silent_past_its_timeout_is_replaced(
    client: openai.OpenAI, locked: UpstreamServer, stream: bool
) -> None:
    for model in ("misconfigured", "silent"):  # a 401 for our stale key; no first byte within 1 s
        started = time.monotonic()
        messages = [{"role": "user", "content": f"{model} {stream}"}]
        if stream:
            events = client.chat.completions.create(model=model, messages=messages, stream=True)  # type: ignore[arg-type]
            headers = events.response.headers
            assert "".join(c.choices[0].delta.content or "" for c in events if c.choices)
        else:
            raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)  # type: ignore[arg-type]
            headers = raw.headers
            assert raw.parse().choices[0].message.content
        assert headers["x-llm-broker-deployment"] == "second/fake-model", model
        assert time.monotonic() - started < 5
    assert calls(locked, f"misconfigured {stream}") == 1
