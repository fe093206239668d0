"""What a client sees of each provider's failures: the conformance suite's scenarios of errors (see
test_conformance.py), each run for every provider whose fake can fail that way."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.fakes.server import FakeServer
from tests.harness import TEST_KEY
from tests.providers import scenario
from tests.providers.case import WRONG_KEY, Answer, ProviderCase, Scenario

HELLO: Any = [{"role": "user", "content": "hello there"}]


def answer(client: openai.OpenAI, stream: bool, **request: Any) -> Answer:
    if stream:
        return list(client.chat.completions.create(stream=True, **request))
    return client.chat.completions.create(**request)


@scenario(Scenario.REFUSED)
def test_what_the_provider_cannot_take_is_a_400_before_anything_is_sent(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer
) -> None:
    request, param = provider.refused
    before = len(upstream.requests)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", **request)
    assert info.value.param == param
    assert len(upstream.requests) == before


@scenario(Scenario.UPSTREAM_RULE)
def test_a_request_the_upstreams_own_rules_refuse_is_its_400(provider: ProviderCase, client: openai.OpenAI) -> None:
    request, param, says = provider.upstream_rule
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", **request)
    assert info.value.param == param and says in info.value.message


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@scenario(Scenario.BAD_REQUEST)
def test_an_upstream_400_is_a_bad_request_with_its_words(provider: ProviderCase, client: openai.OpenAI,
                                                        stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        answer(client, stream, model="bad-request", messages=HELLO)
    assert provider.bad_request_says in info.value.message
    assert info.value.param == provider.bad_request_param


@scenario(Scenario.RATE_LIMITED)
def test_an_upstream_429_is_a_429_with_its_retry_after(provider: ProviderCase, client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="limited", messages=HELLO)
    assert info.value.code == "rate_limit_exceeded"
    # The upstream's Retry-After, passed on; none invented for an upstream that sends none (Bedrock).
    assert info.value.response.headers.get("retry-after") == (provider.retry_after or None)
    assert provider.rate_limited_says in info.value.message


@scenario(Scenario.OVERLOADED)
def test_an_overloaded_upstream_is_a_503(provider: ProviderCase, client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="overloaded", messages=HELLO)
    assert info.value.status_code == 503 and provider.overloaded_says in info.value.message


@scenario(Scenario.FAILOVER)
def test_an_overloaded_deployment_fails_over_to_the_next(provider: ProviderCase, client: openai.OpenAI,
                                                         upstream: FakeServer) -> None:
    raw = client.chat.completions.with_raw_response.create(model="overloaded-or-mock",
                                                           messages=[{"role": "user", "content": "overloaded?"}])
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-llm-broker-deployment"] == "mock/m"
    assert sum(1 for r in upstream.requests if r.body and "overloaded?" in str(r.body)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@scenario(Scenario.SERVER_ERROR)
def test_an_upstream_500_is_a_502_an_http_status_on_streams_too(provider: ProviderCase, client: openai.OpenAI,
                                                                stream: bool) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        answer(client, stream, model="broken", messages=HELLO)
    assert info.value.status_code == 502


@scenario(Scenario.MIDSTREAM_ERROR)
def test_an_error_midstream_reaches_the_sdk_as_an_error_event(provider: ProviderCase, client: openai.OpenAI) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="dies-midway", messages=HELLO, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    text, says = provider.midstream
    assert "".join(received) == text  # what was sent before the failure arrived
    assert says in info.value.message


@scenario(Scenario.WRONG_KEY)
def test_a_wrong_upstream_key_is_a_502_that_never_shows_a_key(provider: ProviderCase, base_url: str) -> None:
    resp = httpx.post(f"{base_url}/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                      json={"model": "misconfigured", "messages": HELLO})
    assert resp.status_code == 502
    assert WRONG_KEY not in resp.text and "987654321" not in resp.text and provider.key[-12:] not in resp.text
    error = resp.json()["error"]
    assert error["type"] == "upstream_error" and provider.wrong_key_says in error["message"]
    assert error["code"] == "upstream_error"  # not the upstream's invalid_api_key: our key, not theirs
    assert resp.headers["x-should-retry"] == "false"  # a retry meets the same wrong key


@scenario(Scenario.TIMEOUT)
def test_an_upstream_timeout_is_a_504(provider: ProviderCase, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="slow", messages=HELLO)
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"
