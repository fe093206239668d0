"""Every provider end to end: the openai SDK → broker API → worker process → the provider's fake over real HTTP.

Each test is a scenario, written once and run for every provider that declares
it (tests/providers/case.py; the failures are in test_failures.py). The test
asserts what every provider must do; the provider's `check_*` hook asserts what
its upstream received (its wire format) and what its fake answered. The fakes
(tests/fakes/) enforce their API's request rules, so a follow-up turn a fake
accepts is one the real API would accept. The OpenAI provider is also compared
with the same SDK talking to its fake directly: the gateway must be invisible
except for the model name and ids.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.fakes.server import FakeServer
from tests.providers import scenario
from tests.providers.case import ProviderCase, Scenario, calls_of, text_of

HELLO: Any = [{"role": "user", "content": "hello there"}]
GREETING: Any = [{"role": "system", "content": "Be brief, use the cache."}, *HELLO]
STORY: Any = [{"role": "user", "content": "tell me a story about streams"}]
COUNTING: Any = [{"role": "user", "content": "one two three four five"}]
PARIS: Any = [{"role": "user", "content": "What's the weather in Paris?"}]
TWO_CITIES: Any = [{"role": "user", "content": "What's the weather in two cities, Paris and Tokyo?"}]
WEATHER: Any = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}]
RESULTS = ('{"temp_c": 15}', '{"temp_c": 22}')
WEATHER_SCHEMA: Any = {
    "type": "object", "additionalProperties": False, "required": ["city", "temp_c", "units"],
    "properties": {"city": {"type": "string"}, "temp_c": {"type": "integer"}, "units": {"type": "string", "enum": ["c", "f"]}}}
IMAGE_URLS = {
    "data-url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
                "AAAABJRU5ErkJggg==",
    "jpg": "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg",
    "webp": "https://example.com/cat.webp",
    "no-extension": "https://picsum.photos/id/237/200/300",  # Gemini must still be told a mimeType
}


def final_of_stream(client: openai.OpenAI, **request: Any) -> ChatCompletion:
    """The SDK's accumulator over a stream: what a client that streams tool calls or JSON ends up with."""
    with client.chat.completions.stream(**request) as stream:
        return stream.get_final_completion()


def two_calls_and_their_results(client: openai.OpenAI, model: str) -> tuple[ChatCompletion, Any]:
    """The answer to TWO_CITIES, two tool calls, and the next turn: the conversation with both results."""
    first = client.chat.completions.create(model=model, messages=TWO_CITIES, tools=WEATHER)
    calls = first.choices[0].message.tool_calls or []
    assert len(calls) == 2
    return first, [*TWO_CITIES, first.choices[0].message.model_dump(exclude_none=True),
                   *({"role": "tool", "tool_call_id": c.id, "content": result} for c, result in zip(calls, RESULTS))]


# ---------------------------------------------------------------- answers


@scenario(Scenario.CHAT)
def test_an_answer_keeps_the_providers_text_finish_reason_and_usage(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer
) -> None:
    request = provider.request(Scenario.CHAT, messages=GREETING, temperature=0.3)
    reply = client.chat.completions.create(model="chat", **request)
    assert reply.model == "chat" and reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    provider.check_chat(upstream, request, reply)


@pytest.mark.parametrize("usage", [False, True], ids=["no-usage", "usage"])
@scenario(Scenario.STREAM)
def test_a_stream_gives_the_same_answer_and_the_usage_only_when_asked(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer, usage: bool
) -> None:
    whole = client.chat.completions.create(model="chat", messages=STORY)
    request: Any = {"messages": STORY, "stream": True}
    if usage:
        request["stream_options"] = {"include_usage": True}
    chunks = list(client.chat.completions.create(model="chat", **request))
    assert chunks[0].choices[0].delta.role == "assistant" and all(c.model == "chat" for c in chunks)
    assert text_of(chunks) == text_of(whole)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    if usage:
        assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.choices and c.usage is None for c in chunks[:-1 if usage else None])
    provider.check_stream(upstream, request, chunks)


@scenario(Scenario.MAX_TOKENS)
def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer
) -> None:
    reply = client.chat.completions.create(model="chat", messages=COUNTING, max_completion_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    provider.check_max_tokens(upstream, reply)


@scenario(Scenario.STOP_SEQUENCES)
def test_a_stop_sequence_ends_the_answer_with_finish_reason_stop(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer
) -> None:
    reply = client.chat.completions.create(model="chat", messages=COUNTING, stop=["four"])
    assert reply.choices[0].finish_reason == "stop" and "four" not in text_of(reply)
    provider.check_stop_sequences(upstream, reply)


@pytest.mark.parametrize("url", IMAGE_URLS.values(), ids=IMAGE_URLS.keys())
@scenario(Scenario.IMAGE)
def test_an_image_reaches_the_upstream_as_it_takes_images(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer, url: str
) -> None:
    request: Any = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}]}
    reply = client.chat.completions.create(model="chat", **request)
    assert reply.choices[0].finish_reason == "stop"
    provider.check_image(upstream, request, reply)
    chunks = list(client.chat.completions.create(model="chat", stream=True, **request))
    assert text_of(chunks) == text_of(reply)
    provider.check_image(upstream, request, chunks)


@scenario(Scenario.JSON_OBJECT)
def test_json_object_mode_answers_a_json_object(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer
) -> None:
    request: Any = {"messages": [{"role": "user", "content": "Answer in JSON, please."}],
                    "response_format": {"type": "json_object"}}
    reply = client.chat.completions.create(model="chat", **request)
    document = json.loads(text_of(reply))
    assert isinstance(document, dict)
    provider.check_json_object(upstream, request, reply)
    assert json.loads(text_of(list(client.chat.completions.create(model="chat", stream=True, **request)))) == document


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@scenario(Scenario.JSON_SCHEMA)
def test_json_schema_mode_fills_the_schema(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer, stream: bool
) -> None:
    request: Any = {"messages": [{"role": "user", "content": "The weather in Paris, as JSON"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "weather", "strict": True, "schema": WEATHER_SCHEMA}}}
    if stream:
        reply = final_of_stream(client, model="chat", **request)
    else:
        reply = client.chat.completions.create(model="chat", **request)
    document = json.loads(text_of(reply))
    assert set(document) == {"city", "temp_c", "units"} and document["units"] in ("c", "f")
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls
    provider.check_json_schema(upstream, request, reply)


@scenario(Scenario.REASONING)
def test_reasoning_tokens_are_counted_and_a_thinking_turn_goes_back_whole(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer
) -> None:
    first, turn = two_calls_and_their_results(client, "thinking")
    assert first.usage is not None and first.usage.completion_tokens_details is not None
    assert first.usage.completion_tokens_details.reasoning_tokens == provider.reasoning_tokens
    client.chat.completions.create(model="thinking", messages=turn, tools=WEATHER)
    provider.check_reasoning(upstream, first)


@pytest.mark.parametrize("model", ["filtered-answer", "filtered-prompt"])
@scenario(Scenario.CONTENT_FILTER)
def test_a_filtered_answer_finishes_with_content_filter(provider: ProviderCase, client: openai.OpenAI,
                                                        model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "something bad"}])
    assert reply.choices[0].finish_reason == "content_filter" and reply.choices[0].message.content == ""
    chunks = list(client.chat.completions.create(model=model, stream=True,
                                                 messages=[{"role": "user", "content": "something bad"}]))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"


@scenario(Scenario.EMBEDDINGS)
def test_embeddings_come_as_base64_by_default_and_as_floats_on_request(provider: ProviderCase,
                                                                       client: openai.OpenAI) -> None:
    default = client.embeddings.create(model="embed", input=["a", "b"], dimensions=8)
    assert [d.embedding for d in default.data] == [
        pytest.approx(provider.embedding(t, 8), abs=1e-6) for t in ("a", "b")]  # the SDK decoded base64 float32
    floats = client.embeddings.create(model="embed", input=["a", "b"], dimensions=8, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.data[1].embedding == pytest.approx(provider.embedding("b", 8), abs=1e-6)
    assert floats.usage.prompt_tokens == 2 and floats.model == "embed"
    raw = client.embeddings.with_raw_response.create(model="embed", input="a", dimensions=8).http_response.json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack("<8f", packed)) == pytest.approx(provider.embedding("a", 8), abs=1e-6)


# ---------------------------------------------------------------- tools


@scenario(Scenario.TOOL_CALL)
def test_a_tool_call_without_streaming(provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer) -> None:
    request = provider.request(Scenario.TOOL_CALL, messages=PARIS, tools=WEATHER)
    reply = client.chat.completions.create(model="chat", **request)
    assert reply.choices[0].finish_reason == "tool_calls"
    [call] = reply.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    provider.check_tool_call(upstream, request, reply)


@scenario(Scenario.FORCED_TOOL_CALL)
def test_a_forced_tool_call_streams_through_the_sdk_accumulator(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer
) -> None:
    request: Any = {"messages": GREETING, "tools": WEATHER,
                    "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    final = final_of_stream(client, model="chat", **request)
    [call] = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # not "get_weatherget_weather": no repeated fragments
    assert final.choices[0].finish_reason == "tool_calls"
    provider.check_forced_tool_call(upstream, request, final)


@scenario(Scenario.PARALLEL_TOOL_CALLS)
def test_two_parallel_tool_calls_without_streaming(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer
) -> None:
    request: Any = {"messages": TWO_CITIES, "tools": WEATHER}
    reply = client.chat.completions.create(model="chat", **request)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert calls_of(reply) == [("get_weather", {"city": city}) for city in provider.cities]
    assert len({c.id for c in reply.choices[0].message.tool_calls or []}) == 2
    provider.check_parallel_tool_calls(upstream, request, reply)


@scenario(Scenario.ONE_TOOL_CALL)
def test_parallel_tool_calls_false_asks_for_one_call(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer
) -> None:
    reply = client.chat.completions.create(model="chat", messages=TWO_CITIES, tools=WEATHER, parallel_tool_calls=False)
    assert calls_of(reply) == [("get_weather", {"city": "Paris"})]
    provider.check_one_tool_call(upstream)


@scenario(Scenario.PARALLEL_TOOL_CALLS_STREAM)
def test_two_parallel_tool_calls_stream_through_the_sdk_accumulator(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer
) -> None:
    request: Any = {"messages": TWO_CITIES, "tools": WEATHER}
    final = final_of_stream(client, model="chat", **request)
    assert final.choices[0].finish_reason == "tool_calls" and final.choices[0].message.role == "assistant"
    assert calls_of(final) == [("get_weather", {"city": city}) for city in provider.cities]  # names never doubled
    assert len({c.id for c in final.choices[0].message.tool_calls or []}) == 2
    # The same without the accumulator: id and name come once per call, indexes count calls from 0.
    chunks = list(client.chat.completions.create(model="chat", stream=True, **request))
    fragments = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [t.index for t in fragments if t.id] == [0, 1]  # each call opens once, the second after the first
    assert all(t.function and t.function.name is None for t in fragments if not t.id)
    provider.check_parallel_tool_calls_stream(upstream, request, final, chunks)


@scenario(Scenario.TOOL_RESULTS)
def test_tool_results_go_back_in_one_turn_the_upstream_accepts(
    provider: ProviderCase, client: openai.OpenAI, upstream: FakeServer
) -> None:
    first, turn = two_calls_and_their_results(client, "chat")
    calls = first.choices[0].message.tool_calls or []
    reply = client.chat.completions.create(model="chat", messages=turn, tools=WEATHER)
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content
    provider.check_tool_results(upstream, calls, reply)
    # Leaving one result out is the upstream's 400; it keeps its status and words through the broker.
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="chat", messages=turn[:-1], tools=WEATHER)
    provider.check_missing_tool_result(calls, info.value)
