"""The `cohere` provider in the conformance suite, against tests/fakes/cohere_upstream.py.

The fake refuses, with Cohere's 400, what the real v2 API refuses (unknown fields, values out of
range, a tool call left unanswered), so a passing answer proves the translation; what it recorded
is checked as Cohere's wire format. Embeddings and a 429 (Cohere's output dimensions and its
rate-limit answer differ from what the shared scenarios ask) are in test_cohere.py.
"""

from __future__ import annotations

import json

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageToolCall,
)

from tests.fakes.cohere_upstream import CohereServer
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


class CohereCase(ProviderCase):
    name = "cohere"
    key = "co-fake-upstream-key-0123456789abcdef"
    scenarios = frozenset(S) - {S.ONE_TOOL_CALL, S.REASONING, S.CONTENT_FILTER, S.EMBEDDINGS, S.RATE_LIMITED,
                                S.TIMEOUT}
    models = {"chat": "command-a-03-2025", "bad-request": "fail-400", "limited": "fail-429",
              "overloaded": "fail-503", "broken": "fail-500", "dies-midway": "midstream-error", "embed": "embed-v4.0"}
    options = {S.CHAT: {"max_tokens": 50}}
    timeout_s = 5
    cities = ("Paris", "London")
    bad_request_says = "invalid request"
    overloaded_says = "overloaded"
    wrong_key_says = "invalid api token"
    midstream = ("You said: ", "internal error interrupted the generation")
    refused = ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n")  # one answer per call
    upstream_rule = ({"messages": [{"role": "user", "content": "hi"}], "temperature": 1.5}, None, "temperature")

    def serve(self) -> FakeServer:
        return CohereServer(api_key=self.key)

    def check_chat(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        sent = last(upstream)
        assert sent.path == "/v2/chat" and sent.headers["authorization"] == f"Bearer {self.key}"
        assert sent.body == {"model": "command-a-03-2025", "max_tokens": 50, "temperature": 0.3, "messages": [
            {"role": "system", "content": "Be brief, use the cache."}, {"role": "user", "content": "hello there"}]}
        assert text_of(reply) == "You said: hello there"
        # What Cohere bills, not its `tokens` (which count 50 prompt tokens it adds itself).
        assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (7, 4)

    def check_stream(self, upstream: FakeServer, request: Request, chunks: list[ChatCompletionChunk]) -> None:
        assert last(upstream).body["stream"] is True
        assert text_of(chunks) == "You said: tell me a story about streams"
        if "stream_options" in request:
            assert chunks[-1].usage is not None
            assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (6, 8)

    def check_tool_call(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        [tool] = last(upstream).body["tools"]
        assert tool["type"] == "function" and tool["function"]["name"] == "get_weather"
        assert tool["function"]["parameters"]["required"] == ["city"]
        assert calls_of(reply) == [("get_weather", {"city": "Paris"})]
        assert reply.choices[0].message.content is None  # the tool plan is Cohere's thinking aloud, not an answer

    def check_forced_tool_call(self, upstream: FakeServer, request: Request, final: ChatCompletion) -> None:
        sent = last(upstream).body
        assert sent["tool_choice"] == "REQUIRED" and [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
        assert calls_of(final) == [("get_weather", {"city": "Paris"})]

    def check_parallel_tool_calls(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        assert reply.choices[0].message.content is None

    def check_parallel_tool_calls_stream(self, upstream: FakeServer, request: Request, final: ChatCompletion,
                                         chunks: list[ChatCompletionChunk]) -> None:
        assert not final.choices[0].message.content  # no tool-plan-delta became content

    def check_tool_results(self, upstream: FakeServer, calls: list[ChatCompletionMessageToolCall],
                           reply: ChatCompletion) -> None:
        messages = last(upstream).body["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
        assert [c["id"] for c in messages[1]["tool_calls"]] == [c.id for c in calls] and "content" not in messages[1]
        assert [(m["tool_call_id"], m["content"]) for m in messages[2:]] == [
            (calls[0].id, '{"temp_c": 15}'), (calls[1].id, '{"temp_c": 22}')]
        assert text_of(reply) == 'Results: get_weather -> {"temp_c": 15}; get_weather -> {"temp_c": 22}'

    def check_missing_tool_result(self, calls: list[ChatCompletionMessageToolCall],
                                  error: openai.BadRequestError) -> None:
        assert "all tool calls must have a corresponding tool result" in error.message

    def check_image(self, upstream: FakeServer, request: Request, answer: Answer) -> None:
        url = request["messages"][0]["content"][1]["image_url"]["url"]
        part = last(upstream).body["messages"][0]["content"][1]
        assert part == {"type": "image_url", "image_url": {"url": url, "detail": "low"}}
        seen = "image/png" if url.startswith("data:") else url
        assert text_of(answer) == f"You said: What is in this image? [saw {seen}]"

    def check_json_object(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        assert last(upstream).body["response_format"] == {"type": "json_object"}
        assert json.loads(text_of(reply)) == {"answer": "ok"}

    def check_json_schema(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        assert last(upstream).body["response_format"] == {
            "type": "json_object", "json_schema": request["response_format"]["json_schema"]["schema"]}
        assert json.loads(text_of(reply)) == {"city": "sunny", "temp_c": 15, "units": "c"}

    def check_max_tokens(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        assert last(upstream).body["max_tokens"] == 3
        assert text_of(reply) == "You said: one"

    def check_stop_sequences(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        assert last(upstream).body["stop_sequences"] == ["four"]
        assert text_of(reply) == "You said: one two three "
