"""The `anthropic` provider in the conformance suite, against tests/fakes/anthropic_upstream.py.

The fake enforces the Messages API's request rules, so every request it accepts
is one the real API would accept; what it recorded is checked as Anthropic's wire format.
"""

from __future__ import annotations

import json

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageToolCall,
)

from tests.fakes.anthropic_upstream import anthropic_server
from tests.fakes.server import FakeServer
from tests.providers.case import (
    Answer,
    ProviderCase,
    Request,
    Scenario,
    calls_of,
    last,
    text_of,
)

S = Scenario
JSON_TOOL_CHOICE = {"type": "tool", "name": "json_response", "disable_parallel_tool_use": True}


class AnthropicCase(ProviderCase):
    name = "anthropic"
    key = "sk-ant-api03-upstream-secret-abcdef123456"
    scenarios = frozenset(S) - {S.REASONING, S.CONTENT_FILTER, S.EMBEDDINGS, S.UPSTREAM_RULE, S.TIMEOUT}
    models = {"chat": "claude-sonnet-4-20250514", "bad-request": "bad", "limited": "rate-limited",
              "overloaded": "overloaded", "broken": "server-error", "dies-midway": "midstream-error"}
    cities = ("Paris", "Tokyo")
    bad_request_says = "injected invalid request"
    rate_limited_says, retry_after = "exceed the rate limit", "7"
    overloaded_says = "Overloaded"  # a 529 overloaded_error
    wrong_key_says = "authentication_error"
    midstream = ("You said: he", "Overloaded")  # two text fragments, then the error event
    refused = ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n")

    def serve(self) -> FakeServer:
        return anthropic_server(api_key=self.key)

    def base_url(self, upstream: FakeServer) -> str:
        return f"http://127.0.0.1:{upstream.port}"  # like https://api.anthropic.com: no /v1

    def check_chat(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        sent = last(upstream)
        assert sent.path == "/v1/messages"
        assert sent.headers["x-api-key"] == self.key and sent.headers["anthropic-version"] == "2023-06-01"
        assert sent.body == {"model": "claude-sonnet-4-20250514", "max_tokens": 4096, "system": "Be brief, use the cache.",
                             "messages": [{"role": "user", "content": "hello there"}], "temperature": 0.3}
        assert text_of(reply) == "You said: hello there"
        # 7 prompt words + 100 cache reads + 20 cache writes (the fake reports cache use for "cache" prompts).
        assert reply.usage is not None and reply.usage.prompt_tokens == 127 and reply.usage.completion_tokens == 4
        assert reply.usage.prompt_tokens_details and reply.usage.prompt_tokens_details.cached_tokens == 100

    def check_stream(self, upstream: FakeServer, request: Request, chunks: list[ChatCompletionChunk]) -> None:
        assert last(upstream).body["stream"] is True and "stream_options" not in last(upstream).body

    def check_tool_call(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        assert last(upstream).body["tools"] == [{"name": "get_weather", "description": "Current weather in a city",
                                                 "input_schema": request["tools"][0]["function"]["parameters"]}]
        assert text_of(reply) == "I'll check the weather."
        assert calls_of(reply) == [("get_weather", {"city": "Paris"})]
        assert all(c.id.startswith("toolu_") for c in reply.choices[0].message.tool_calls or [])

    def check_forced_tool_call(self, upstream: FakeServer, request: Request, final: ChatCompletion) -> None:
        assert last(upstream).body["tool_choice"] == {"type": "tool", "name": "get_weather"}
        assert calls_of(final) == [("get_weather", {"city": "Paris"})]

    def check_parallel_tool_calls(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        assert text_of(reply) == "I'll check the weather."
        assert all(c.id.startswith("toolu_") for c in reply.choices[0].message.tool_calls or [])

    def check_one_tool_call(self, upstream: FakeServer) -> None:
        assert last(upstream).body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}

    def check_parallel_tool_calls_stream(self, upstream: FakeServer, request: Request, final: ChatCompletion,
                                         chunks: list[ChatCompletionChunk]) -> None:
        assert text_of(final) == "I'll check the weather."

    def check_tool_results(self, upstream: FakeServer, calls: list[ChatCompletionMessageToolCall],
                           reply: ChatCompletion) -> None:
        assert text_of(reply) == 'Tool results: {"temp_c": 15}; {"temp_c": 22}'
        turns = last(upstream).body["messages"]
        assert [t["role"] for t in turns] == ["user", "assistant", "user"]  # both results in one user turn
        assert [b["type"] for b in turns[1]["content"]] == ["text", "tool_use", "tool_use"]
        assert turns[1]["content"][1]["input"] == {"city": "Paris"}
        assert turns[2]["content"] == [
            {"type": "tool_result", "tool_use_id": calls[0].id, "content": '{"temp_c": 15}'},
            {"type": "tool_result", "tool_use_id": calls[1].id, "content": '{"temp_c": 22}'}]

    def check_missing_tool_result(self, calls: list[ChatCompletionMessageToolCall],
                                  error: openai.BadRequestError) -> None:
        assert "`tool_use` ids were found without `tool_result` blocks" in error.message and calls[1].id in error.message

    def check_image(self, upstream: FakeServer, request: Request, answer: Answer) -> None:
        url = request["messages"][0]["content"][1]["image_url"]["url"]
        media_type, _, data = url.removeprefix("data:").partition(";base64,")
        source = {"type": "base64", "media_type": media_type, "data": data} if data else {"type": "url", "url": url}
        assert last(upstream).body["messages"][0]["content"] == [
            {"type": "text", "text": "What is in this image?"}, {"type": "image", "source": source}]
        assert text_of(answer) == "I see 1 image(s). You said: What is in this image?"

    def check_json_object(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        # JSON comes as the input of a forced tool call, which the adapter makes the answer's text.
        assert last(upstream).body["tool_choice"] == JSON_TOOL_CHOICE
        assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls
        assert json.loads(text_of(reply)) == {"answer": "the weather in Paris is sunny"}

    def check_json_schema(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        body = last(upstream).body
        assert body["tool_choice"] == JSON_TOOL_CHOICE
        assert body["tools"][0]["input_schema"] == request["response_format"]["json_schema"]["schema"]
        assert json.loads(text_of(reply)) == {"city": "Paris", "temp_c": 3, "units": "c"}

    def check_max_tokens(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        assert last(upstream).body["max_tokens"] == 3
        assert text_of(reply) == "You said: one"

    def check_stop_sequences(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        assert last(upstream).body["stop_sequences"] == ["four"]
        assert text_of(reply) == "You said: one two three "
