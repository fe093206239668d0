"""The `gemini` provider end to end: the openai SDK → broker API → worker process → fake Gemini over HTTP.

The fake (tests/fakes/gemini_upstream.py) rejects, with Google's 400, any
request the real API would reject, so a passing answer proves the translation;
the tests also read what the fake received.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from broker.config import GeminiProvider
from broker.config.types import Secret
from broker.errors import InvalidRequest
from broker.wire import EmbeddingRequest, embedding_request_decoder
from tests.fakes.gemini_upstream import GeminiServer, embedding
from workers.providers.gemini import GeminiGenerateContent

UPSTREAM_KEY = "AIzaSy-fake-upstream-key-0123456789"
PUBLIC_MODELS = {
    "gem": "gemini-2.5-flash", "gem-thinking": "thinking", "gem-safety": "unsafe-answer",
    "gem-blocked": "blocked-prompt", "gem-429": "fail-429", "gem-503": "fail-503", "gem-400": "fail-400",
    "gem-embed": "gemini-embedding-001",
}
WEATHER_TOOL: Any = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def upstream() -> Iterator[GeminiServer]:
    server = GeminiServer(api_key=UPSTREAM_KEY)
    with server:
        yield server


@pytest.fixture(scope="module")
def base_url(module_stack_factory: Any, upstream: GeminiServer) -> str:
    providers = {"gemini": {"kind": "gemini", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY, "timeout_s": 5}}
    models = {name: [{"provider": "gemini", "model": m}] for name, m in PUBLIC_MODELS.items()}
    stack = module_stack_factory(providers, models)
    return str(stack.up("gemini"))


def sent(upstream: GeminiServer) -> Any:
    return upstream.requests[-1]


def test_plain_chat_sends_gemini_shapes_and_the_key_header(client: openai.OpenAI, upstream: GeminiServer) -> None:
    reply = client.chat.completions.create(model="gem", temperature=0.3, max_tokens=50, messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}])
    request = sent(upstream)
    assert request.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert request.headers["x-goog-api-key"] == UPSTREAM_KEY and "key=" not in request.path
    assert request.body["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert request.body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 50}
    assert reply.model == "gem" and reply.choices[0].message.content == "You said: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 4)


def test_streaming_with_usage(client: openai.OpenAI, upstream: GeminiServer) -> None:
    chunks = list(client.chat.completions.create(
        model="gem", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count one two three four five"}]))
    assert sent(upstream).path.endswith(":streamGenerateContent?alt=sse")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: count one two three four five"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (6, 8)


def test_tool_call_then_a_follow_up_turn_with_its_result(client: openai.OpenAI, upstream: GeminiServer) -> None:
    messages: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model="gem", messages=messages, tools=WEATHER_TOOL)
    assert sent(upstream).body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["required"] == ["city"]
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})

    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 15}'}]
    second = client.chat.completions.create(model="gem", messages=messages, tools=WEATHER_TOOL)
    contents = sent(upstream).body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    assert contents[2]["parts"] == [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 15}}}]
    assert second.choices[0].message.content == 'Results: get_weather -> {"temp_c": 15}'


def test_two_parallel_calls_stream_through_the_sdk_accumulator(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="gem", tools=WEATHER_TOOL, messages=[
            {"role": "user", "content": "Weather in two cities please"}]) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "London"]
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]  # no repeated fragments
    assert len({c.id for c in calls}) == 2 and final.choices[0].finish_reason == "tool_calls"


def test_two_parallel_calls_non_stream_and_their_results_in_one_turn(client: openai.OpenAI,
                                                                     upstream: GeminiServer) -> None:
    messages: Any = [{"role": "user", "content": "Weather in two cities?"}]
    reply = client.chat.completions.create(model="gem-thinking", messages=messages, tools=WEATHER_TOOL)
    calls = reply.choices[0].message.tool_calls or []
    assert len(calls) == 2 and reply.choices[0].message.content is None
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 7
    messages += [reply.choices[0].message.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": f"sunny in {c.function.name}"} for c in calls]
    client.chat.completions.create(model="gem-thinking", messages=messages, tools=WEATHER_TOOL)
    model_turn, results_turn = sent(upstream).body["contents"][1:]
    # The thinking model's signature went back on the call that carried it (Gemini 3 requires it).
    assert model_turn["parts"][0]["thoughtSignature"] and "thoughtSignature" not in model_turn["parts"][1]
    assert len(results_turn["parts"]) == 2


def test_an_image_data_url_becomes_inline_data(client: openai.OpenAI, upstream: GeminiServer) -> None:
    reply = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    parts = sent(upstream).body["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    assert reply.choices[0].message.content == "You said: what is this [saw image/png]"


@pytest.mark.parametrize("url", ["https://example.com/cat.webp", "https://picsum.photos/id/237/200/300"])
def test_an_https_image_url_reaches_gemini_as_file_data(client: openai.OpenAI, upstream: GeminiServer,
                                                         url: str) -> None:
    # The fake, as Gemini does, takes an https fileUri only with its mimeType (PROTOCOLS §6.5).
    for stream in (False, True):
        reply = client.chat.completions.create(model="gem", stream=stream, messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": url}}]}])
        text = reply.choices[0].message.content if isinstance(reply, ChatCompletion) else "".join(
            c.choices[0].delta.content or "" for c in reply if c.choices)
        assert text == f"You said: what is this [saw {url}]"
        assert sent(upstream).body["contents"][0]["parts"][1]["fileData"]["fileUri"] == url


def test_a_plain_http_image_url_is_a_400_before_anything_is_sent(client: openai.OpenAI,
                                                                  upstream: GeminiServer) -> None:
    before = len(upstream.requests)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gem", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}}]}])
    assert info.value.param == "messages[0].content[0].image_url.url"
    assert len(upstream.requests) == before


def test_json_schema_mode(client: openai.OpenAI, upstream: GeminiServer) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "temp_c": {"type": "integer"}},
              "required": ["city", "temp_c"], "additionalProperties": False}
    reply = client.chat.completions.create(model="gem", messages=[{"role": "user", "content": "Paris?"}],
                                           response_format={"type": "json_schema", "json_schema": {
                                               "name": "weather", "strict": True, "schema": schema}})
    config = sent(upstream).body["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": schema}
    assert json.loads(reply.choices[0].message.content or "") == {"city": "sunny", "temp_c": 15}


@pytest.mark.parametrize("model", ["gem-safety", "gem-blocked"])
def test_safety_blocks_finish_with_content_filter(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "something bad"}])
    assert reply.choices[0].finish_reason == "content_filter" and reply.choices[0].message.content == ""
    chunks = list(client.chat.completions.create(model=model, stream=True,
                                                 messages=[{"role": "user", "content": "something bad"}]))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"


def test_a_429_is_a_rate_limit_error_with_googles_retry_delay(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gem-429", messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.headers["retry-after"] == "7"
    assert "RESOURCE_EXHAUSTED" in info.value.message


def test_a_503_stays_a_503_and_a_400_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(model="gem-503", messages=[{"role": "user", "content": "hi"}])
    assert unavailable.value.status_code == 503
    with pytest.raises(openai.BadRequestError) as bad:
        list(client.chat.completions.create(model="gem-400", stream=True, messages=[{"role": "user", "content": "x"}]))
    assert "INVALID_ARGUMENT" in bad.value.message


# ---------------------------------------------------------------- embeddings, the adapter over real HTTP


@pytest.fixture
async def adapter(upstream: GeminiServer) -> AsyncIterator[GeminiGenerateContent]:
    provider = GeminiGenerateContent("gemini", GeminiProvider(base_url=upstream.base_url, api_key=Secret(UPSTREAM_KEY)))
    yield provider
    await provider.aclose()


def embedding_request(**body: Any) -> EmbeddingRequest:
    return embedding_request_decoder.decode(json.dumps({"model": "gem-embed", **body}).encode())


async def test_embed_returns_vectors_in_input_order(adapter: GeminiGenerateContent, upstream: GeminiServer) -> None:
    result = await adapter.embed(embedding_request(input=["a", "bb", "ccc"], dimensions=8),
                                 model="gemini-embedding-001", deadline=time.time() + 10)
    assert result.vectors == [embedding(t, 8) for t in ("a", "bb", "ccc")]
    assert result.prompt_tokens == 3
    request = sent(upstream)
    assert request.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert request.body["requests"][0] == {"model": "models/gemini-embedding-001",
                                           "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 8}


async def test_embed_splits_more_than_100_inputs_into_batches(adapter: GeminiGenerateContent,
                                                              upstream: GeminiServer) -> None:
    texts = [f"text {i}" for i in range(250)]
    result = await adapter.embed(embedding_request(input=texts), model="gemini-embedding-001",
                                 deadline=time.time() + 10)
    assert len(result.vectors) == 250 and result.vectors[249] == embedding("text 249", 768)
    assert sorted(len(r.body["requests"]) for r in list(upstream.requests)[-3:]) == [50, 100, 100]


async def test_embed_refuses_token_ids(adapter: GeminiGenerateContent) -> None:
    with pytest.raises(InvalidRequest):
        await adapter.embed(embedding_request(input=[1, 2, 3]), model="gemini-embedding-001", deadline=time.time() + 5)


# ---------------------------------------------------------------- embeddings through the SDK
# Needs the lead's /v1/embeddings endpoint and embeddings jobs in the worker loop.


def test_sdk_embeddings_default_base64_and_float(client: openai.OpenAI) -> None:
    default = client.embeddings.create(model="gem-embed", input=["a", "b"], dimensions=8)
    assert [d.embedding for d in default.data] == [
        pytest.approx(embedding(t, 8), abs=1e-6) for t in ("a", "b")]  # the SDK decoded base64 float32
    floats = client.embeddings.create(model="gem-embed", input=["a", "b"], dimensions=8, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.data[1].embedding == pytest.approx(embedding("b", 8), abs=1e-6)
    assert floats.usage.prompt_tokens == 2 and floats.model == "gem-embed"
    raw = client.embeddings.with_raw_response.create(model="gem-embed", input="a", dimensions=8).http_response.json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack("<8f", packed)) == pytest.approx(embedding("a", 8), abs=1e-6)
