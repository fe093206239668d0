"""The fake upstream is only useful if the official SDK can't tell it from OpenAI."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import UpstreamServer

KEY = "sk-test-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "three words here"}]
TOOL = {"type": "function", "function": {"name": "get_weather",
                                         "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=KEY, chunks=5) as s:
        yield s


@pytest.fixture
def client(server: UpstreamServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0, timeout=5) as c:
        yield c


def test_non_stream_completion_is_openai_shaped(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert done.id.startswith("chatcmpl-") and done.object == "chat.completion"
    assert done.model == "fake-model"
    choice = done.choices[0]
    assert choice.message.role == "assistant" and choice.message.refusal is None
    assert choice.message.content == "tok0 tok1 tok2 tok3 tok4"
    assert choice.finish_reason == "stop"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens,
            done.usage.total_tokens) == (3, 5, 8)


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model="fake-model", messages=MESSAGES,
                                          max_completion_tokens=2)
    assert done.choices[0].message.content == "tok0 tok1"
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 2


def test_stream_with_usage_orders_role_words_finish_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="fake-model", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}))
    assert len(chunks) == 1 + 5 + 1 + 1  # role, words, finish, usage
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == "tok0 tok1 tok2 tok3 tok4"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * 6 + ["stop"]
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 5)


def test_stream_without_include_usage_sends_no_usage_key(server: UpstreamServer) -> None:
    body = {"model": "fake-model", "messages": MESSAGES, "stream": True}
    r = httpx.post(f"{server.base_url}/chat/completions", json=body,
                   headers={"authorization": f"Bearer {KEY}"})
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") and '"usage"' not in e for e in events[:-2])


def test_forced_tool_call_streams_through_the_sdk_accumulator(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="fake-model", messages=MESSAGES, tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"  # not "assistantassistant"
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"arg": "value"}'


def test_forced_tool_call_non_stream(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="fake-model", messages=MESSAGES, tools=[TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    message = done.choices[0].message
    assert done.choices[0].finish_reason == "tool_calls" and message.content is None
    assert message.tool_calls and message.tool_calls[0].function.name == "get_weather"


def test_wrong_key_is_401_without_echoing_the_key(server: UpstreamServer) -> None:
    wrong = "sk-wrong-key-abcdefghijkl"
    with openai.OpenAI(api_key=wrong, base_url=server.base_url, max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError) as exc:
            c.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert exc.value.code == "invalid_api_key" and exc.value.type == "invalid_request_error"
    assert wrong not in str(exc.value)


def test_fail_429_is_a_rate_limit_error_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="fail-429", messages=MESSAGES)
    assert exc.value.code == "rate_limit_exceeded"
    assert exc.value.response.headers["retry-after"] == "1"
    assert exc.value.request_id


@pytest.mark.parametrize(("model", "error"), [
    ("fail-400", openai.BadRequestError),
    ("fail-500", openai.InternalServerError),
    ("fail-503", openai.InternalServerError),
])
def test_injected_status_errors_map_to_sdk_exceptions(
    client: openai.OpenAI, model: str, error: type[openai.APIStatusError],
) -> None:
    with pytest.raises(error):
        client.chat.completions.create(model=model, messages=MESSAGES)


def test_midstream_error_raises_while_iterating(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="midstream-error", messages=MESSAGES,
                                            stream=True)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert not isinstance(exc.value, openai.APIStatusError)
    assert exc.value.type == "server_error"
    assert "".join(seen) == "tok0 tok1 tok2"


def test_slow_model_trips_the_client_timeout(server: UpstreamServer) -> None:
    with openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0,
                       timeout=0.3) as c:
        with pytest.raises(openai.APITimeoutError):
            c.chat.completions.create(model="slow", messages=MESSAGES)


def test_requests_are_recorded_for_assertions(client: openai.OpenAI,
                                              server: UpstreamServer) -> None:
    client.chat.completions.create(model="fake-model", messages=MESSAGES, temperature=0.5)
    last = server.app.state.requests[-1]
    assert (last.method, last.path) == ("POST", "/v1/chat/completions")
    assert last.headers["authorization"] == f"Bearer {KEY}"
    assert last.body["temperature"] == 0.5 and last.body["messages"] == MESSAGES


def test_models_lists_the_fake_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["fake-model"]
