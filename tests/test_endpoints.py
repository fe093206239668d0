"""Legacy completions, embeddings, tools, JSON mode, capability routing and pass-through names.

Through the official SDK, the broker's API and worker processes, on real Redis:
against the built-in mock and against the fake OpenAI upstream over real HTTP.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from broker.config import hash_key
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import TEST_KEY
from tests.stacks import StackFactory

PASSTHROUGH_KEY = "sk-passthrough-tenant"


pytestmark = pytest.mark.upstream(api_key="sk-up", chunks=6)


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory, upstream: UpstreamServer) -> str:
    providers = {
        "mock": {"kind": "mock", "tokens": 5},
        "up": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-up"},
        "up-ollama": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-up", "profile": "ollama"},
        "up-mistral": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-up", "profile": "mistral"},
        "up-azure": {"kind": "openai", "base_url": upstream.base_url.removesuffix("/v1"), "api_key": "sk-up",
                     "profile": "azure", "api_version": "2024-10-21"},
    }
    models = {
        "mock": [{"provider": "mock", "model": "m"}],
        "mock-text-only": [{"provider": "mock", "model": "m", "capabilities": {"tools": False, "vision": False}}],
        "mock-small": [{"provider": "mock", "model": "m", "capabilities": {"max_context_tokens": 10}}],
        "up": [{"provider": "up", "model": "fake-model"}],
        "up-ollama": [{"provider": "up-ollama", "model": "llama3"}],
        "up-mistral": [{"provider": "up-mistral", "model": "mistral-small"}],
        "up-azure": [{"provider": "up-azure", "model": "my-gpt-deployment"}],
        "json-object-only": [{"provider": "mock", "model": "m", "capabilities": {"json_schema": False}}],
        # Two deployments: the first can't do tools, so tool requests go to the second.
        "mixed": [{"provider": "mock", "model": "m", "capabilities": {"tools": False}},
                  {"provider": "up", "model": "fake-model"}],
    }
    tenants = {"test": {"keys": [hash_key(TEST_KEY)]},
               "power": {"keys": [hash_key(PASSTHROUGH_KEY)], "passthrough": True}}
    stack = module_stack_factory(providers, models, tenants=tenants)
    return str(stack.up(*providers))


USER: Any = [{"role": "user", "content": "what is the weather in Paris"}]
WEATHER: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_legacy_completions_from_the_mock(client: openai.OpenAI) -> None:
    result = client.completions.create(model="mock", prompt=["one two", "three"], max_tokens=3)
    assert result.object == "text_completion" and result.model == "mock"
    assert [c.index for c in result.choices] == [0, 1]
    assert all(len(c.text.split()) == 3 and c.finish_reason == "length" for c in result.choices)
    assert result.usage is not None and (result.usage.prompt_tokens, result.usage.completion_tokens) == (3, 6)
    streamed = list(client.completions.create(model="mock", prompt="one two", stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == client.completions.create(
        model="mock", prompt="one two").choices[0].text
    assert streamed[-1].usage is not None and streamed[-1].choices == []


def test_legacy_completions_pass_through_to_an_openai_upstream(client: openai.OpenAI,
                                                               upstream: UpstreamServer) -> None:
    result = client.completions.create(model="up", prompt="hello world", max_tokens=4)
    assert upstream.requests[-1].path == "/v1/completions"
    assert upstream.requests[-1].body["model"] == "fake-model"
    assert result.choices[0].text == "w0 w1 w2 w3" and result.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model="up", prompt="hello", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "w0 w1 w2 w3 w4 w5"


@pytest.mark.parametrize("model", ["mock", "up"])
def test_embeddings_default_base64_decoded_by_the_sdk(client: openai.OpenAI, model: str) -> None:
    as_base64 = client.embeddings.create(model=model, input=["alpha", "beta"], dimensions=8)
    as_floats = client.embeddings.create(model=model, input=["alpha", "beta"], dimensions=8,
                                         encoding_format="float")
    assert [len(d.embedding) for d in as_base64.data] == [8, 8]
    for a, b in zip(as_base64.data, as_floats.data):
        assert a.embedding == pytest.approx(b.embedding, rel=1e-6)  # float32 round trip
    assert as_base64.data[0].embedding != as_base64.data[1].embedding
    assert as_floats.usage.prompt_tokens == 2 and as_floats.model == model


def test_embeddings_token_array_input(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="mock", input=[[1, 2, 3], [4]], encoding_format="float")
    assert len(result.data) == 2


def test_invalid_embedding_inputs_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="mock", input=[])
    assert info.value.param == "input"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="mock", input=["a", 1])  # type: ignore[list-item]


def test_forced_tool_call_from_the_mock(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(model="mock", messages=USER, tools=WEATHER, tool_choice="required")
    call = result.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city"}
    assert result.choices[0].finish_reason == "tool_calls"
    with client.chat.completions.stream(model="mock", messages=USER, tools=WEATHER,
                                        tool_choice="required") as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == call.function.arguments  # type: ignore[index]


def test_json_mode_from_the_mock(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(model="mock", messages=USER, response_format={"type": "json_object"})
    assert "answer" in json.loads(result.choices[0].message.content or "")


def test_a_request_needing_a_missing_capability_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="mock-text-only", messages=USER, tools=WEATHER)
    assert info.value.param == "tools" and info.value.code == "unsupported_capability"
    image: Any = [{"role": "user", "content": [{"type": "text", "text": "what is this"}, {
        "type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="mock-text-only", messages=image)
    assert info.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="mock-small", messages=[{"role": "user", "content": "x" * 400}])
    assert info.value.code == "context_length_exceeded"


def test_routing_skips_a_deployment_that_lacks_a_capability(client: openai.OpenAI,
                                                            upstream: UpstreamServer) -> None:
    plain = client.chat.completions.create(model="mixed", messages=USER)
    assert plain.choices[0].message.content and not plain.choices[0].message.content.startswith("tok")  # mock
    before = len(upstream.requests)
    tools = client.chat.completions.create(model="mixed", messages=USER, tools=WEATHER,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert len(upstream.requests) == before + 1  # served by the OpenAI-compatible deployment
    assert tools.choices[0].message.tool_calls


def test_profiles_adapt_the_request_to_the_server(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    client.chat.completions.create(model="up-ollama", messages=USER, n=1, max_completion_tokens=3,
                                   tools=WEATHER, tool_choice="auto")
    sent = upstream.requests[-1].body
    assert "n" not in sent and "tool_choice" not in sent  # Ollama rejects them
    assert sent["max_tokens"] == 3 and "max_completion_tokens" not in sent
    client.chat.completions.create(model="up-mistral", messages=USER, seed=42)
    sent = upstream.requests[-1].body
    assert sent["random_seed"] == 42 and "seed" not in sent
    list(client.chat.completions.create(model="up-mistral", messages=USER, stream=True))
    assert "stream_options" not in upstream.requests[-1].body  # Mistral has none


def test_extra_body_reaches_an_openai_compatible_server_as_top_level_fields(client: openai.OpenAI,
                                                                              upstream: UpstreamServer) -> None:
    # vLLM-style extensions the broker does not model travel as the client sent them...
    extra = {"guided_json": {"type": "object", "properties": {"city": {"type": "string"}}},
             "chat_template_kwargs": {"enable_thinking": False}}
    list(client.chat.completions.create(model="up", messages=USER, stream=True, extra_body=extra))
    sent = upstream.requests[-1].body
    assert {k: sent[k] for k in extra} == extra and "extra_body" not in sent
    client.completions.create(model="up", prompt="say hi", extra_body={"skip_special_tokens": False})
    assert upstream.requests[-1].body["skip_special_tokens"] is False
    # ...but not to a strict server, which would refuse the whole request for them.
    client.chat.completions.create(model="up-mistral", messages=USER, extra_body=extra)
    assert not set(extra) & set(upstream.requests[-1].body)


def test_azure_profile_uses_the_deployment_path_and_api_key_header(client: openai.OpenAI,
                                                                   upstream: UpstreamServer) -> None:
    result = client.chat.completions.create(model="up-azure", messages=USER)
    sent = upstream.requests[-1]
    assert sent.path == "/openai/deployments/my-gpt-deployment/chat/completions"
    assert sent.headers["api-key"] == "sk-up"
    assert result.choices[0].message.content


def test_passthrough_names_reach_a_provider_model_directly(base_url: str, upstream: UpstreamServer) -> None:
    power = openai.OpenAI(base_url=base_url, api_key=PASSTHROUGH_KEY, max_retries=0)
    result = power.chat.completions.create(model="up/some-upstream-model", messages=USER)
    assert upstream.requests[-1].body["model"] == "some-upstream-model"
    assert result.model == "up/some-upstream-model"
    plain = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        plain.chat.completions.create(model="up/some-upstream-model", messages=USER)


def test_a_passthrough_name_can_be_retrieved_as_a_model(base_url: str) -> None:
    power = openai.OpenAI(base_url=base_url, api_key=PASSTHROUGH_KEY, max_retries=0)
    card = power.models.retrieve("up/some-upstream-model")  # was a 500: no such configured model
    assert (card.id, card.owned_by) == ("up/some-upstream-model", "up")
    plain = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        plain.models.retrieve("up/some-upstream-model")


def test_json_object_and_json_schema_are_separate_capabilities(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(model="json-object-only", messages=USER,
                                            response_format={"type": "json_object"})
    assert json.loads(result.choices[0].message.content or "")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="json-object-only", messages=USER, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
    assert info.value.param == "response_format" and "structured outputs" in info.value.message
