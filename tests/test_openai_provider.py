"""The `openai` provider against a protocol-faithful fake upstream over real HTTP.

The SDK talks to the broker; a worker process talks to the fake. Each answer is
compared with what the same SDK gets from the fake directly: the gateway must
be invisible except for the model name and the id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TEST_KEY
from tests.fakes.openai_upstream import UpstreamServer

UPSTREAM_KEY = "sk-upstream-secret-abcdef123456"
PUBLIC_MODELS = {
    "chat": "fake-model",
    "bad-request": "fail-400",
    "limited": "fail-429",
    "broken": "fail-500",
    "overloaded": "fail-503",
    "dies-midway": "midstream-error",
    "slow": "slow",
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=UPSTREAM_KEY, chunks=8) as server:
        yield server


@pytest.fixture(scope="module")
def base_url(module_stack_factory: Any, upstream: UpstreamServer) -> str:
    providers = {
        "up": {"kind": "openai", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY, "timeout_s": 2},
        "up-wrong-key": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-wrong-key-987654321"},
    }
    models: dict[str, Any] = {name: [{"provider": "up", "model": m}] for name, m in PUBLIC_MODELS.items()}
    models["misconfigured"] = [{"provider": "up-wrong-key", "model": "fake-model"}]
    stack = module_stack_factory(providers, models)
    stack.worker("up")
    stack.worker("up-wrong-key")
    return str(stack.api())


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)


@pytest.fixture
def direct(upstream: UpstreamServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=upstream.base_url, api_key=UPSTREAM_KEY, max_retries=0)


MESSAGES: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def last_request(upstream: UpstreamServer) -> Any:
    return upstream.requests[-1]


def test_completion_matches_the_upstream_and_sends_its_model_id_and_key(
    client: openai.OpenAI, direct: openai.OpenAI, upstream: UpstreamServer
) -> None:
    via_broker = client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0.2, seed=7)
    sent = last_request(upstream)
    assert sent.body["model"] == "fake-model"
    assert sent.body["temperature"] == 0.2 and sent.body["seed"] == 7
    assert sent.body["messages"] == MESSAGES
    assert "stream_options" not in sent.body
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"

    expected = direct.chat.completions.create(model="fake-model", messages=MESSAGES, temperature=0.2, seed=7)
    assert via_broker.model == "chat"
    assert via_broker.choices[0].message.content == expected.choices[0].message.content
    assert via_broker.choices[0].finish_reason == expected.choices[0].finish_reason
    assert via_broker.usage == expected.usage


def test_stream_matches_the_upstream_and_usage_is_always_requested(
    client: openai.OpenAI, direct: openai.OpenAI, upstream: UpstreamServer
) -> None:
    chunks = list(client.chat.completions.create(model="chat", messages=MESSAGES, stream=True))
    # We always ask the upstream for usage (we account by it)...
    assert last_request(upstream).body["stream_options"] == {"include_usage": True}
    # ...but a client that did not ask gets no usage chunk.
    assert all(c.choices and c.usage is None for c in chunks)
    expected = [c for c in direct.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)]
    assert [c.choices[0].delta.model_dump() for c in chunks] == [c.choices[0].delta.model_dump() for c in expected]
    assert [c.choices[0].finish_reason for c in chunks] == [c.choices[0].finish_reason for c in expected]


def test_stream_usage_chunk_when_the_client_asks(client: openai.OpenAI, direct: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    expected = list(direct.chat.completions.create(
        model="fake-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage == expected[-1].usage
    assert len(chunks) == len(expected)


def test_forced_tool_call_streams_through_the_sdk_accumulator(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with client.chat.completions.stream(
        model="chat", messages=MESSAGES, tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # not "get_weatherget_weather": no repeated fragments
    assert json.loads(call.function.arguments) == {"arg": "value"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_upstream_400_keeps_its_status_and_param(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="bad-request", messages=MESSAGES)
    assert info.value.param == "messages"
    assert "injected failure" in info.value.message


def test_upstream_429_is_a_429_with_retry_after(base_url: str) -> None:
    resp = httpx.post(f"{base_url}/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                      json={"model": "limited", "messages": MESSAGES})
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(("model", "status"), [("broken", 502), ("overloaded", 503)])
def test_upstream_server_errors_map_to_gateway_statuses(client: openai.OpenAI, model: str, status: int) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert info.value.status_code == status


def test_upstream_failure_before_the_first_chunk_is_an_http_status_on_streams(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        list(client.chat.completions.create(model="broken", messages=MESSAGES, stream=True))
    assert info.value.status_code == 502


def test_midstream_upstream_error_reaches_the_sdk_as_an_error_event(client: openai.OpenAI) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="dies-midway", messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received).strip()  # the words sent before the failure arrived
    assert "server had an error" in info.value.message


def test_upstream_auth_failure_is_a_502_that_never_shows_the_upstream_key(base_url: str) -> None:
    resp = httpx.post(f"{base_url}/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                      json={"model": "misconfigured", "messages": MESSAGES})
    assert resp.status_code == 502
    assert "sk-wrong-key-987654321" not in resp.text and "987654321" not in resp.text
    assert resp.json()["error"]["type"] == "upstream_error"


def test_upstream_timeout_is_a_504(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="slow", messages=MESSAGES)
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"
