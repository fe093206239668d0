"""The `openai` provider in the conformance suite, against tests/fakes/openai_upstream.py.

Its answers are checked against the same SDK talking to the fake directly (`expected`):
the gateway must be invisible except for the model name and the ids. The fake enforces
OpenAI's request rules (tests/fakes/openai_rules.py).
"""

from __future__ import annotations

from typing import Any

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageToolCall,
)

from tests.fakes.openai_legacy import vector
from tests.fakes.openai_upstream import UpstreamServer
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


def without_ids(value: Any) -> Any:
    """A model_dump with tool-call ids blanked: each request gets fresh ones, everything else must match."""
    if isinstance(value, dict):
        return {k: ("<id>" if k == "id" and isinstance(v, str) and v.startswith("call_") else without_ids(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [without_ids(v) for v in value]
    return value


def message(completion: ChatCompletion) -> Any:
    return without_ids(completion.choices[0].message.model_dump())


def deltas(chunks: list[ChatCompletionChunk]) -> list[Any]:
    return [(without_ids(c.choices[0].delta.model_dump()), c.choices[0].finish_reason) for c in chunks if c.choices]


class OpenAICase(ProviderCase):
    name = "openai"
    key = "sk-upstream-secret-abcdef123456"
    scenarios = frozenset(S) - {S.STOP_SEQUENCES, S.REASONING, S.CONTENT_FILTER, S.REFUSED}
    models = {"chat": "fake-model", "bad-request": "fail-400", "limited": "fail-429", "broken": "fail-500",
              "overloaded": "fail-503", "dies-midway": "midstream-error", "slow": "slow",
              "embed": "text-embedding-3-small"}
    options = {S.CHAT: {"seed": 7}, S.TOOL_CALL: {"tool_choice": "required"}}
    timeout_s = 2
    cities = ("Paris", "Tokyo")
    bad_request_says, bad_request_param = "injected failure", "messages"
    rate_limited_says, retry_after = "Rate limit reached", "1"
    overloaded_says = "overloaded"
    wrong_key_says = "Incorrect API key provided"
    midstream = ("tok0 tok1 tok2", "server had an error")
    # OpenAI's own rule: json_object needs the word JSON in the messages.
    upstream_rule = ({"messages": [{"role": "user", "content": "hello there"}], "response_format": {"type": "json_object"}},
                     "messages", "must contain the word 'json'")
    embedding = staticmethod(vector)

    def serve(self) -> FakeServer:
        return UpstreamServer(api_key=self.key, chunks=8)

    def direct(self, upstream: FakeServer) -> openai.OpenAI:
        return openai.OpenAI(base_url=upstream.base_url, api_key=self.key, max_retries=0)

    def expected(self, upstream: FakeServer, request: Request) -> ChatCompletion:
        return self.direct(upstream).chat.completions.create(model="fake-model", **request)

    def check_chat(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        sent = last(upstream)
        assert sent.body["model"] == "fake-model"
        assert sent.body["temperature"] == 0.3 and sent.body["seed"] == 7
        assert sent.body["messages"] == request["messages"]
        assert "stream_options" not in sent.body
        assert sent.headers["authorization"] == f"Bearer {self.key}"
        expected = self.expected(upstream, request)
        assert reply.choices[0].message.content == expected.choices[0].message.content
        assert reply.choices[0].finish_reason == expected.choices[0].finish_reason
        assert reply.usage == expected.usage
        assert reply.choices[0].message.annotations == expected.choices[0].message.annotations == []

    def check_stream(self, upstream: FakeServer, request: Request, chunks: list[ChatCompletionChunk]) -> None:
        # We always ask the upstream for usage (we account by it); the client gets it only if it asked.
        assert last(upstream).body["stream_options"] == {"include_usage": True}
        expected = list(self.direct(upstream).chat.completions.create(model="fake-model", **request))
        assert len(chunks) == len(expected)
        assert [c.choices[0].delta.model_dump() for c in chunks if c.choices] == [
            c.choices[0].delta.model_dump() for c in expected if c.choices]
        assert [c.choices[0].finish_reason for c in chunks if c.choices] == [
            c.choices[0].finish_reason for c in expected if c.choices]
        assert chunks[-1].usage == expected[-1].usage

    def check_tool_call(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        sent = last(upstream).body
        assert sent["tools"] == request["tools"] and sent["tool_choice"] == "required"
        expected = self.expected(upstream, request)
        assert reply.choices[0].message.content is None
        assert calls_of(reply) == calls_of(expected) == [("get_weather", {"arg": "value"})]
        assert message(reply) == message(expected)
        assert reply.usage == expected.usage

    def check_forced_tool_call(self, upstream: FakeServer, request: Request, final: ChatCompletion) -> None:
        assert last(upstream).body["tool_choice"] == request["tool_choice"]
        assert calls_of(final) == [("get_weather", {"arg": "value"})]

    def check_parallel_tool_calls(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        expected = self.expected(upstream, request)
        assert calls_of(reply) == calls_of(expected)
        assert message(reply) == message(expected)
        assert all(c.id.startswith("call_") for c in reply.choices[0].message.tool_calls or [])
        assert reply.usage == expected.usage

    def check_one_tool_call(self, upstream: FakeServer) -> None:
        assert last(upstream).body["parallel_tool_calls"] is False

    def check_parallel_tool_calls_stream(self, upstream: FakeServer, request: Request, final: ChatCompletion,
                                         chunks: list[ChatCompletionChunk]) -> None:
        assert all(c.id.startswith("call_") and c.id.count("call_") == 1 for c in final.choices[0].message.tool_calls or [])
        expected = list(self.direct(upstream).chat.completions.create(model="fake-model", stream=True, **request))
        assert deltas(chunks) == deltas(expected)

    def check_tool_results(self, upstream: FakeServer, calls: list[ChatCompletionMessageToolCall],
                           reply: ChatCompletion) -> None:
        sent = last(upstream).body["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
        assert [m["tool_call_id"] for m in sent[2:]] == [c.id for c in calls]
        assert [c["id"] for c in sent[1]["tool_calls"]] == [c.id for c in calls]

    def check_missing_tool_result(self, calls: list[ChatCompletionMessageToolCall],
                                  error: openai.BadRequestError) -> None:
        assert error.param == "messages.[1].role" and calls[1].id in error.message

    def check_image(self, upstream: FakeServer, request: Request, answer: Answer) -> None:
        assert last(upstream).body["messages"] == request["messages"]  # unchanged
        if isinstance(answer, ChatCompletion):
            expected = self.expected(upstream, request)
            assert text_of(answer) == text_of(expected)
            assert answer.usage == expected.usage and answer.usage is not None and answer.usage.prompt_tokens > 85

    def check_json_object(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        assert last(upstream).body["response_format"] == request["response_format"]
        assert text_of(reply) == text_of(self.expected(upstream, request))

    check_json_schema = check_json_object  # either format goes up as the client gave it

    def check_max_tokens(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        assert last(upstream).body["max_completion_tokens"] == 3
        assert text_of(reply) == "tok0 tok1 tok2"
