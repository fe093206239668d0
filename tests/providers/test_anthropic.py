"""The `anthropic` provider end to end: the openai SDK → broker API → worker → fake Anthropic API.

The fake (tests/fakes/anthropic_upstream.py) enforces the Messages API's request
rules, so every request it accepts here is one the real API would accept; what
it recorded is asserted as the Anthropic wire format.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.anthropic_upstream import anthropic_server
from tests.fakes.server import FakeServer, RecordedRequest
from tests.harness import TEST_KEY

UPSTREAM_KEY = "sk-ant-api03-upstream-secret-abcdef123456"
PUBLIC_MODELS = {
    "claude": "claude-sonnet-4-20250514",
    "claude-overloaded": "overloaded",
    "claude-limited": "rate-limited",
    "claude-bad": "bad",
    "claude-dies-midway": "midstream-error",
}
WEATHER: Any = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c63f8cfc0f01f0005"
    "0001ff5ccc6d8d0000000049454e44ae426082")).decode()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeServer]:
    with anthropic_server(api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def base_url(module_stack_factory: Any, upstream: FakeServer) -> str:
    origin = f"http://127.0.0.1:{upstream.port}"  # like https://api.anthropic.com: no /v1
    providers = {
        "claude": {"kind": "anthropic", "base_url": origin, "api_key": UPSTREAM_KEY, "timeout_s": 10},
        "claude-wrong-key": {"kind": "anthropic", "base_url": origin, "api_key": "sk-ant-api03-wrong-987654321"},
        "mock": {"kind": "mock", "tokens": 2},
    }
    models: dict[str, Any] = {name: [{"provider": "claude", "model": m}] for name, m in PUBLIC_MODELS.items()}
    models["claude-misconfigured"] = [{"provider": "claude-wrong-key", "model": "claude-sonnet-4-20250514"}]
    models["claude-or-mock"] = [{"provider": "claude", "model": "overloaded"}, {"provider": "mock", "model": "m"}]
    stack = module_stack_factory(providers, models)
    return str(stack.up("claude", "claude-wrong-key", "mock"))


def sent(upstream: FakeServer) -> RecordedRequest:
    return upstream.requests[-1]


def test_chat_hoists_the_system_prompt_and_sends_the_anthropic_headers(
    client: openai.OpenAI, upstream: FakeServer
) -> None:
    reply = client.chat.completions.create(model="claude", temperature=0.3, messages=[
        {"role": "system", "content": "Be brief, use the cache."}, {"role": "user", "content": "hello there"}])
    request = sent(upstream)
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == UPSTREAM_KEY and request.headers["anthropic-version"] == "2023-06-01"
    assert request.body == {"model": "claude-sonnet-4-20250514", "max_tokens": 4096,
                            "system": "Be brief, use the cache.", "messages": [{"role": "user", "content": "hello there"}], "temperature": 0.3}
    assert reply.model == "claude"
    assert reply.choices[0].message.content == "You said: hello there"
    assert reply.choices[0].finish_reason == "stop"
    # 7 prompt words + 100 cache reads + 20 cache writes (the fake reports cache use for "cache" prompts).
    assert reply.usage is not None and reply.usage.prompt_tokens == 127 and reply.usage.completion_tokens == 4
    assert reply.usage.prompt_tokens_details and reply.usage.prompt_tokens_details.cached_tokens == 100


def test_stream_gives_the_same_answer_a_finish_reason_and_a_usage_chunk(
    client: openai.OpenAI, upstream: FakeServer
) -> None:
    messages: Any = [{"role": "user", "content": "tell me a story about streams"}]
    whole = client.chat.completions.create(model="claude", messages=messages)
    chunks = list(client.chat.completions.create(model="claude", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert sent(upstream).body["stream"] is True and "stream_options" not in sent(upstream).body
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_max_tokens_and_stop_sequences_reach_anthropic_and_come_back_as_finish_reasons(
    client: openai.OpenAI, upstream: FakeServer
) -> None:
    messages: Any = [{"role": "user", "content": "one two three four five"}]
    cut = client.chat.completions.create(model="claude", messages=messages, max_completion_tokens=3)
    assert sent(upstream).body["max_tokens"] == 3
    assert cut.choices[0].finish_reason == "length" and cut.choices[0].message.content == "You said: one"
    stopped = client.chat.completions.create(model="claude", messages=messages, stop=["four"])
    assert sent(upstream).body["stop_sequences"] == ["four"]
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == "You said: one two three "


def test_tool_call_without_streaming(client: openai.OpenAI, upstream: FakeServer) -> None:
    reply = client.chat.completions.create(model="claude", tools=WEATHER, messages=[
        {"role": "user", "content": "What's the weather in Paris?"}])
    assert sent(upstream).body["tools"] == [{"name": "get_weather", "description": "Current weather in a city",
                                             "input_schema": WEATHER[0]["function"]["parameters"]}]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "I'll check the weather."
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("toolu_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"location": "Paris"}


def test_two_parallel_tool_calls_stream_through_the_sdk_accumulator(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Weather in two cities, please."}]
    with client.chat.completions.stream(model="claude", messages=messages, tools=WEATHER) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "I'll check the weather."
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"location": "Paris"}), ("get_weather", {"location": "Tokyo"})]
    assert len({c.id for c in calls}) == 2
    # The same without the accumulator: id and name come once per call, indexes count calls from 0.
    raw = list(client.chat.completions.create(model="claude", messages=messages, tools=WEATHER, stream=True))
    fragments = [t for c in raw if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [t.index for t in fragments if t.id] == [0, 1]
    assert all(t.function is None or t.function.name is None for t in fragments if not t.id)


def test_parallel_tool_calls_false_asks_for_one_call(client: openai.OpenAI, upstream: FakeServer) -> None:
    reply = client.chat.completions.create(model="claude", tools=WEATHER, parallel_tool_calls=False, messages=[
        {"role": "user", "content": "Weather in two cities, please."}])
    assert sent(upstream).body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert len(reply.choices[0].message.tool_calls or []) == 1


def test_tool_results_go_back_as_one_valid_user_turn(client: openai.OpenAI, upstream: FakeServer) -> None:
    messages: Any = [{"role": "user", "content": "Weather in two cities, please."}]
    first = client.chat.completions.create(model="claude", messages=messages, tools=WEATHER)
    calls = first.choices[0].message.tool_calls or []
    assert len(calls) == 2
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": calls[0].id, "content": "15C, cloudy"},
                 {"role": "tool", "tool_call_id": calls[1].id, "content": "22C, sunny"}]
    answer = client.chat.completions.create(model="claude", messages=messages, tools=WEATHER)
    assert answer.choices[0].message.content == "Tool results: 15C, cloudy; 22C, sunny"
    turns = sent(upstream).body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert [b["type"] for b in turns[1]["content"]] == ["text", "tool_use", "tool_use"]
    assert turns[1]["content"][1]["input"] == {"location": "Paris"}
    assert turns[2]["content"] == [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "15C, cloudy"},
                                   {"type": "tool_result", "tool_use_id": calls[1].id, "content": "22C, sunny"}]


def test_data_url_image_becomes_a_base64_block(client: openai.OpenAI, upstream: FakeServer) -> None:
    reply = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}}]}])
    assert sent(upstream).body["messages"][0]["content"] == [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]
    assert reply.choices[0].message.content == "I see 1 image(s). You said: What is in this picture?"


@pytest.mark.parametrize("stream", [False, True])
def test_json_mode_answers_parseable_json(client: openai.OpenAI, upstream: FakeServer, stream: bool) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "rain_mm": {"type": "number"}},
              "required": ["city", "rain_mm"]}
    kwargs: Any = {"model": "claude", "messages": [{"role": "user", "content": "Rain in Paris as JSON"}],
                   "response_format": {"type": "json_schema", "json_schema": {"name": "rain", "schema": schema}}}
    if stream:
        with client.chat.completions.stream(**kwargs) as s:
            reply = s.get_final_completion()
    else:
        reply = client.chat.completions.create(**kwargs)
    body = sent(upstream).body
    assert body["tool_choice"] == {"type": "tool", "name": "json_response", "disable_parallel_tool_use": True}
    assert body["tools"][0]["input_schema"] == schema
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls
    assert json.loads(reply.choices[0].message.content or "") == {"city": "Paris", "rain_mm": 21.5}


def test_json_object_mode(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="claude", response_format={"type": "json_object"},
                                           messages=[{"role": "user", "content": "Answer in JSON"}])
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_an_overloaded_529_fails_over_to_the_next_deployment(client: openai.OpenAI, upstream: FakeServer) -> None:
    raw = client.chat.completions.with_raw_response.create(model="claude-or-mock",
                                                           messages=[{"role": "user", "content": "overloaded?"}])
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-llm-broker-deployment"] == "mock/m"
    assert sum(1 for r in upstream.requests if r.body and "overloaded?" in str(r.body)) == 1


def test_overloaded_is_a_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="claude-overloaded", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503 and "Overloaded" in info.value.message


def test_rate_limited_is_a_429_with_retry_after(client: openai.OpenAI, base_url: str) -> None:
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="claude-limited", messages=[{"role": "user", "content": "hi"}])
    resp = httpx.post(f"{base_url}/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                      json={"model": "claude-limited", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 429 and resp.headers["retry-after"] == "7"


def test_invalid_request_is_a_400_with_anthropics_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude-bad", messages=[{"role": "user", "content": "hi"}])
    assert "injected invalid request" in info.value.message


def test_what_anthropic_cannot_take_is_refused_before_the_upstream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude", n=2, messages=[{"role": "user", "content": "hi"}])
    assert info.value.param == "n"


def test_error_event_mid_stream_raises_in_the_sdk_loop(client: openai.OpenAI) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="claude-dies-midway", stream=True,
                                                    messages=[{"role": "user", "content": "hello there"}]):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "You said: he"  # the two text fragments sent before the error
    assert "Overloaded" in info.value.message


def test_wrong_upstream_key_is_a_502_that_never_shows_the_key(base_url: str) -> None:
    resp = httpx.post(f"{base_url}/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                      json={"model": "claude-misconfigured", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 502 and "authentication_error" in resp.json()["error"]["message"]
    assert "987654321" not in resp.text and "abcdef123456" not in resp.text
