"""The `openai` provider against a protocol-faithful fake upstream over real HTTP.

The SDK talks to the broker; a worker process talks to the fake. Each answer is
compared with what the same SDK gets from the fake directly: the gateway must
be invisible except for the model name and the ids. The fake enforces OpenAI's
request rules (tests/fakes/openai_rules.py), so a follow-up turn it accepts is
one OpenAI would accept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import TEST_KEY

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
    return str(stack.up("up", "up-wrong-key"))


@pytest.fixture
def direct(upstream: UpstreamServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=upstream.base_url, api_key=UPSTREAM_KEY, max_retries=0)


MESSAGES: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
TWO_CITIES: Any = [{"role": "user", "content": "What's the weather in two cities, Paris and Tokyo?"}]
WEATHER: Any = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
PNG_DATA_URL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
                "AAAABJRU5ErkJggg==")


def last_request(upstream: UpstreamServer) -> Any:
    return upstream.requests[-1]


def calls_of(completion: Any) -> list[tuple[str, Any]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in completion.choices[0].message.tool_calls or []]


def without_ids(value: Any) -> Any:
    """A model_dump with tool-call ids blanked: each request gets fresh ones, everything else must match."""
    if isinstance(value, dict):
        return {k: ("<id>" if k == "id" and isinstance(v, str) and v.startswith("call_") else without_ids(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [without_ids(v) for v in value]
    return value


def message(completion: Any) -> Any:
    return without_ids(completion.choices[0].message.model_dump())


def deltas(chunks: list[Any]) -> list[Any]:
    return [(without_ids(c.choices[0].delta.model_dump()), c.choices[0].finish_reason) for c in chunks if c.choices]


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
    assert resp.json()["error"]["code"] == "upstream_error"  # not the upstream's invalid_api_key: our key, not theirs
    assert resp.headers["x-should-retry"] == "false"  # a retry meets the same wrong key


def test_upstream_timeout_is_a_504(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="slow", messages=MESSAGES)
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"


# ---------------------------------------------------------------- tools


def test_tool_call_without_streaming_matches_the_upstream(
    client: openai.OpenAI, direct: openai.OpenAI, upstream: UpstreamServer
) -> None:
    reply = client.chat.completions.create(model="chat", messages=MESSAGES, tools=WEATHER, tool_choice="required")
    assert last_request(upstream).body["tools"] == WEATHER and last_request(upstream).body["tool_choice"] == "required"
    expected = direct.chat.completions.create(model="fake-model", messages=MESSAGES, tools=WEATHER,
                                              tool_choice="required")
    assert reply.choices[0].finish_reason == "tool_calls" and reply.choices[0].message.content is None
    assert calls_of(reply) == calls_of(expected) == [("get_weather", {"arg": "value"})]
    assert message(reply) == message(expected)
    assert reply.usage == expected.usage


def test_message_annotations_survive_the_broker(client: openai.OpenAI, direct: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="chat", messages=MESSAGES)
    expected = direct.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert reply.choices[0].message.annotations == expected.choices[0].message.annotations == []


def test_two_parallel_tool_calls_without_streaming(
    client: openai.OpenAI, direct: openai.OpenAI, upstream: UpstreamServer
) -> None:
    reply = client.chat.completions.create(model="chat", messages=TWO_CITIES, tools=WEATHER)
    expected = direct.chat.completions.create(model="fake-model", messages=TWO_CITIES, tools=WEATHER)
    assert calls_of(reply) == calls_of(expected) == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]
    assert message(reply) == message(expected)
    ids = [c.id for c in reply.choices[0].message.tool_calls or []]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    assert reply.choices[0].finish_reason == "tool_calls" and reply.usage == expected.usage
    # parallel_tool_calls: false reaches the upstream, which then makes one call.
    single = client.chat.completions.create(model="chat", messages=TWO_CITIES, tools=WEATHER,
                                            parallel_tool_calls=False)
    assert last_request(upstream).body["parallel_tool_calls"] is False
    assert calls_of(single) == [("get_weather", {"city": "Paris"})]


def test_two_parallel_tool_calls_stream_through_the_sdk_accumulator(
    client: openai.OpenAI, direct: openai.OpenAI
) -> None:
    with client.chat.completions.stream(model="chat", messages=TWO_CITIES, tools=WEATHER) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls" and message.role == "assistant"
    assert len(message.tool_calls or []) == 2
    assert [c.function.name for c in message.tool_calls or []] == ["get_weather", "get_weather"]  # never doubled
    assert calls_of(final) == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Tokyo"})]
    assert all(c.id.startswith("call_") and c.id.count("call_") == 1 for c in message.tool_calls or [])

    chunks = list(client.chat.completions.create(model="chat", messages=TWO_CITIES, tools=WEATHER, stream=True))
    expected = list(direct.chat.completions.create(model="fake-model", messages=TWO_CITIES, tools=WEATHER,
                                                   stream=True))
    assert deltas(chunks) == deltas(expected)
    fragments = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [t.index for t in fragments if t.id] == [0, 1]  # each call opens once, the second after the first
    assert all(t.function and t.function.name is None for t in fragments if not t.id)


def test_follow_up_turn_with_both_tool_results_is_accepted(
    client: openai.OpenAI, upstream: UpstreamServer
) -> None:
    first = client.chat.completions.create(model="chat", messages=TWO_CITIES, tools=WEATHER)
    calls = first.choices[0].message.tool_calls or []
    cities = [city for _, city in calls_of(first)]
    turn: Any = [*TWO_CITIES, first.choices[0].message.model_dump(exclude_none=True),
                 *({"role": "tool", "tool_call_id": c.id, "content": f"sunny in {city['city']}"}
                   for c, city in zip(calls, cities))]
    answer = client.chat.completions.create(model="chat", messages=turn, tools=WEATHER)
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    sent = last_request(upstream).body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [m["tool_call_id"] for m in sent[2:]] == [c.id for c in calls]
    assert [c["id"] for c in sent[1]["tool_calls"]] == [c.id for c in calls]
    # Leaving one result out is a 400 from OpenAI; it keeps its status and param through the broker.
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", messages=turn[:-1], tools=WEATHER)
    assert info.value.param == "messages.[1].role" and calls[1].id in info.value.message


# ---------------------------------------------------------------- images and JSON mode


@pytest.mark.parametrize("url", [PNG_DATA_URL, "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"])
def test_image_input_reaches_the_upstream_unchanged(
    client: openai.OpenAI, direct: openai.OpenAI, upstream: UpstreamServer, url: str
) -> None:
    messages: Any = [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}]
    reply = client.chat.completions.create(model="chat", messages=messages)
    assert last_request(upstream).body["messages"] == messages
    expected = direct.chat.completions.create(model="fake-model", messages=messages)
    assert reply.choices[0].message.content == expected.choices[0].message.content
    assert reply.usage == expected.usage and reply.usage is not None and reply.usage.prompt_tokens > 85


def test_json_object_mode_answers_a_json_object(
    client: openai.OpenAI, direct: openai.OpenAI, upstream: UpstreamServer
) -> None:
    messages: Any = [{"role": "user", "content": "Answer in JSON, please."}]
    fmt: Any = {"type": "json_object"}
    reply = client.chat.completions.create(model="chat", messages=messages, response_format=fmt)
    assert last_request(upstream).body["response_format"] == fmt
    expected = direct.chat.completions.create(model="fake-model", messages=messages, response_format=fmt)
    assert reply.choices[0].message.content == expected.choices[0].message.content
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    streamed = list(client.chat.completions.create(model="chat", messages=messages, response_format=fmt, stream=True))
    assert json.loads("".join(c.choices[0].delta.content or "" for c in streamed if c.choices)) == json.loads(
        reply.choices[0].message.content or "")
    # OpenAI's own rule: json_object needs the word JSON in the messages.
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", messages=MESSAGES, response_format=fmt)
    assert info.value.param == "messages"


def test_json_schema_mode_fills_the_required_properties(
    client: openai.OpenAI, direct: openai.OpenAI, upstream: UpstreamServer
) -> None:
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "weather", "strict": True, "schema": {
        "type": "object", "additionalProperties": False, "required": ["city", "temperature", "units"],
        "properties": {"city": {"type": "string"}, "temperature": {"type": "number"},
                       "units": {"type": "string", "enum": ["c", "f"]}}}}}
    reply = client.chat.completions.create(model="chat", messages=MESSAGES, response_format=fmt)
    assert last_request(upstream).body["response_format"] == fmt
    document = json.loads(reply.choices[0].message.content or "")
    assert set(document) == {"city", "temperature", "units"} and document["units"] in ("c", "f")
    expected = direct.chat.completions.create(model="fake-model", messages=MESSAGES, response_format=fmt)
    assert reply.choices[0].message.content == expected.choices[0].message.content
    with client.chat.completions.stream(model="chat", messages=MESSAGES, response_format=fmt) as stream:
        final = stream.get_final_completion()
    assert json.loads(final.choices[0].message.content or "") == document
