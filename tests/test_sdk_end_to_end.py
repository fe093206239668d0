"""The unmodified official openai SDK against `llm-broker api` + a worker process on real Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from tests.harness import TEST_KEY
from tests.stacks import StackFactory
from workers.providers.mock import mock_words

PROVIDERS = {"mock": {"kind": "mock", "tokens": 12},
             "mock-slow": {"kind": "mock", "tokens": 30, "token_delay_s": 0.07},  # ~2 s a stream
             "mock-late": {"kind": "mock", "tokens": 3, "first_token_delay_s": 2.5}}  # a long queue wait, say
MODELS = {"mock-chat": [{"provider": "mock", "model": "mock-upstream-id"}],
          "slow-chat": [{"provider": "mock-slow", "model": "slow-id"}],
          "late-chat": [{"provider": "mock-late", "model": "late-id"}]}


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory) -> str:
    # drain_timeout_s 0: a timed-out request leaves mock-late's 2.5 s job running, which SIGTERM need not wait for.
    stack = module_stack_factory(PROVIDERS, MODELS, queue={"drain_timeout_s": 0})
    return str(stack.up("mock", "mock-slow", "mock-late"))


def expected_text(prompt: str, tokens: int = 12) -> str:
    return " ".join(mock_words(prompt, tokens))


def test_sync_sdk_gets_a_chat_completion(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    result = client.chat.completions.create(
        model="mock-chat", messages=[{"role": "user", "content": "tell me about foxes"}]
    )
    assert result.object == "chat.completion"
    assert result.model == "mock-chat"  # the public name, not the upstream id
    assert result.id.startswith("chatcmpl-")
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == expected_text("tell me about foxes")
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (4, 12, 16)


def test_max_tokens_cuts_the_answer_with_finish_reason_length(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    result = client.chat.completions.create(
        model="mock-chat", max_tokens=3, messages=[{"role": "user", "content": "short please"}]
    )
    assert result.choices[0].message.content == expected_text("short please", 3)
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 3


def test_async_sdk_runs_concurrent_requests(base_url: str) -> None:
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
        async with client:
            results = await asyncio.gather(*(
                client.chat.completions.create(model="mock-chat", messages=[{"role": "user", "content": f"q{i}"}])
                for i in range(20)
            ))
        return [r.choices[0].message.content or "" for r in results]

    answers = asyncio.run(main())
    assert answers == [expected_text(f"q{i}") for i in range(20)]


def test_streaming_sdk_gets_ordered_chunks_and_usage(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    chunks = list(client.chat.completions.create(
        model="mock-chat", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream it"}],
    ))
    assert len({c.id for c in chunks}) == 1
    assert all(c.model == "mock-chat" and c.object == "chat.completion.chunk" for c in chunks)
    content_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in content_chunks[1:])  # role only once
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == expected_text("stream it")
    assert [c.choices[0].finish_reason for c in content_chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in content_chunks[:-1])
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and usage_chunk.usage.completion_tokens == 12


def test_stream_accumulator_builds_the_same_message(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    with client.chat.completions.stream(
        model="mock-chat", messages=[{"role": "user", "content": "accumulate"}]
    ) as stream:
        final = stream.get_final_completion()
    # The SDK concatenates every string field of every delta: a repeated role would show here.
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].message.content == expected_text("accumulate")


def test_async_streaming(base_url: str) -> None:
    async def main() -> str:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
        async with client:
            stream = await client.chat.completions.create(
                model="mock-chat", stream=True, messages=[{"role": "user", "content": "async stream"}]
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(main()) == expected_text("async stream")


def test_raw_sse_framing_matches_openai(base_url: str) -> None:
    with httpx.stream(
        "POST", f"{base_url}/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
        json={"model": "mock-chat", "stream": True, "messages": [{"role": "user", "content": "raw"}]},
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["cache-control"] == "no-cache"
        body = resp.read().decode()
    events = body.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    # Each event one data line of JSON, after its id (a resumed stream starts after it: test_resumable_streams).
    assert [e.split("\n")[0] for e in events[:-2]] == [f"id: 1.{i}" for i in range(len(events) - 2)]
    assert all(e.split("\n")[1].startswith("data: {") and e.count("\n") == 1 for e in events[:-2])
    assert "event:" not in body  # OpenAI streams carry no event names


def test_models_list_and_retrieve(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    models = client.models.list()
    assert [(m.id, m.owned_by) for m in models.data] == [  # sorted by id
        ("late-chat", "mock-late"), ("mock-chat", "mock"), ("slow-chat", "mock-slow")]
    assert client.models.retrieve("mock-chat").id == "mock-chat"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_a_stream_outlives_the_sdks_read_timeout_as_it_would_against_openai(base_url: str) -> None:
    # The SDK's timeout bounds each read, and chunks come every 70 ms: a 2 s stream is fine
    # with timeout=1 against OpenAI, so it must be through the broker too.
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0, timeout=1.0)
    stream = client.chat.completions.create(model="slow-chat", stream=True,
                                            messages=[{"role": "user", "content": "take your time"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == expected_text("take your time", 30)


def test_a_stream_slow_to_start_keeps_the_sdks_read_timeout_from_firing(base_url: str) -> None:
    # 2.5 s before the first token, a 1 s read timeout: the 200 and keep-alive comments come
    # every half of it, so the client keeps reading (the default hold and keep-alive would be 2 s, 15 s).
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0, timeout=1.0)
    stream = client.chat.completions.create(model="late-chat", stream=True,
                                            messages=[{"role": "user", "content": "whenever"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected_text("whenever", 3)


def test_a_non_streaming_request_is_not_worked_on_past_the_sdks_timeout(base_url: str) -> None:
    # Without streaming the SDK's read timeout is its whole wait: the broker's deadline follows it.
    resp = httpx.post(f"{base_url}/chat/completions", timeout=10,
                      headers={"authorization": f"Bearer {TEST_KEY}", "x-stainless-read-timeout": "1"},
                      json={"model": "slow-chat", "messages": [{"role": "user", "content": "too slow"}]})
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"


def test_every_answer_and_error_carries_a_request_id(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    completion = client.chat.completions.create(model="mock-chat", messages=[{"role": "user", "content": "id?"}])
    stream = client.chat.completions.create(model="mock-chat", stream=True,
                                            messages=[{"role": "user", "content": "id?"}])
    list(stream)
    assert completion._request_id and completion._request_id.startswith("req_")
    assert stream.response.headers["x-request-id"].startswith("req_")
    assert completion._request_id != stream.response.headers["x-request-id"]
    timeout = httpx.post(f"{base_url}/chat/completions", timeout=10,
                         headers={"authorization": f"Bearer {TEST_KEY}", "x-request-timeout": "0.5"},
                         json={"model": "late-chat", "messages": [{"role": "user", "content": "x"}]})
    assert timeout.status_code == 504 and timeout.headers["x-request-id"].startswith("req_")


def test_forced_tool_call_arguments_validate_against_the_tool_schema(base_url: str) -> None:
    from tests.test_mock_schema import ORDER, valid

    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    tools: Any = [{"type": "function", "function": {"name": "place_order", "parameters": ORDER}}]
    messages: Any = [{"role": "user", "content": "order something"}]
    done = client.chat.completions.create(model="mock-chat", messages=messages, tools=tools, tool_choice="required")
    call = (done.choices[0].message.tool_calls or [])[0]
    assert call.type == "function" and call.function.name == "place_order"
    valid(json.loads(call.function.arguments), ORDER)
    # Streamed, the SDK's accumulator puts together the same call.
    with client.chat.completions.stream(model="mock-chat", messages=messages, tools=tools,
                                        tool_choice={"type": "function", "function": {"name": "place_order"}}) as s:
        final = s.get_final_completion()
    streamed = (final.choices[0].message.tool_calls or [])[0]
    assert streamed.function.arguments == call.function.arguments
