"""What a provider brings to the conformance suite (test_conformance.py).

As with TensorZero's `generate_provider_tests!` and Bifrost's `TestScenarios`, a
scenario is written once and runs for every provider that declares it. A provider
declares its protocol-faithful fake (tests/fakes/), the fake's model id behind
each public model the scenarios call (the id picks the fake's behaviour: an
answer, a failure), and for each of its scenarios a `check_*` hook with what only
it can say: the wire format its upstream must have received, the answer its fake
gives. What every provider shares, the suite asserts itself.

A new provider is a case module here and one line in tests/providers/__init__.py.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from typing import Any, ClassVar

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageToolCall,
)

from tests.fakes.server import FakeServer, RecordedRequest
from tests.stacks import StackFactory

Request = dict[str, Any]  # an SDK call's keyword arguments, `model` aside
Answer = ChatCompletion | list[ChatCompletionChunk]  # a reply, or a stream's chunks
WRONG_KEY = "sk-wrong-key-987654321"  # what the `misconfigured` model's deployment sends its upstream


class Scenario(enum.StrEnum):
    CHAT = enum.auto()
    STREAM = enum.auto()  # with and without the usage chunk
    TOOL_CALL = enum.auto()
    FORCED_TOOL_CALL = enum.auto()
    PARALLEL_TOOL_CALLS = enum.auto()
    PARALLEL_TOOL_CALLS_STREAM = enum.auto()
    ONE_TOOL_CALL = enum.auto()  # parallel_tool_calls: false
    TOOL_RESULTS = enum.auto()
    IMAGE = enum.auto()  # data: and https: URLs
    JSON_OBJECT = enum.auto()
    JSON_SCHEMA = enum.auto()
    MAX_TOKENS = enum.auto()
    STOP_SEQUENCES = enum.auto()
    REASONING = enum.auto()  # model `thinking`
    CONTENT_FILTER = enum.auto()  # models `filtered-answer` and `filtered-prompt`
    EMBEDDINGS = enum.auto()  # model `embed`
    REFUSED = enum.auto()  # a request the provider cannot take never reaches it
    UPSTREAM_RULE = enum.auto()  # a request only the upstream knows it refuses
    BAD_REQUEST = enum.auto()  # model `bad-request`: the fake's 400
    RATE_LIMITED = enum.auto()  # model `limited`: its 429
    OVERLOADED = enum.auto()  # model `overloaded`: its 503 (Anthropic: 529)
    FAILOVER = enum.auto()  # model `overloaded-or-mock`: the overloaded deployment, then the mock
    SERVER_ERROR = enum.auto()  # model `broken`: its 500
    MIDSTREAM_ERROR = enum.auto()  # model `dies-midway`: an error event after some text
    WRONG_KEY = enum.auto()  # model `misconfigured`: its deployment sends WRONG_KEY
    TIMEOUT = enum.auto()  # model `slow`: an answer later than the deployment's timeout_s


class ProviderCase:
    """One provider as the suite sees it; a subclass fills in the class attributes its scenarios read."""

    name: ClassVar[str]  # the provider's name in the stack, and the test id (its `kind` unless `deployment` says another)
    key: ClassVar[str]  # the key its fake accepts
    scenarios: ClassVar[frozenset[Scenario]]
    models: ClassVar[dict[str, str]]  # public model → the fake's model id; "chat" answers
    options: ClassVar[dict[Scenario, Request]] = {}  # what this provider's request adds in a scenario
    timeout_s: ClassVar[float] = 10
    cities: ClassVar[tuple[str, str]]  # the fake's two calls to a weather question about "two cities"
    # What the client must read of each failure (a fragment of the fake's error message):
    bad_request_says: ClassVar[str] = ""
    bad_request_param: ClassVar[str | None] = None
    rate_limited_says: ClassVar[str] = ""
    retry_after: ClassVar[str] = ""  # the fake's, in seconds, as the client must get it ("": it sends none)
    overloaded_says: ClassVar[str] = ""
    wrong_key_says: ClassVar[str] = ""
    midstream: ClassVar[tuple[str, str]] = ("", "")  # the text before the error event, and its words
    refused: ClassVar[tuple[Request, str]] = ({}, "")  # a request this provider cannot take, the 400's param
    upstream_rule: ClassVar[tuple[Request, str | None, str]] = ({}, None, "")  # one its fake refuses: param, words
    reasoning_tokens: ClassVar[int] = 0  # the `thinking` model's
    embedding: ClassVar[Callable[[str, int], list[float]]]  # the fake's vector for a text

    def request(self, scenario: Scenario, **request: Any) -> Request:
        """A scenario's request with what this provider adds to it."""
        return {**request, **self.options.get(scenario, {})}

    def serve(self) -> FakeServer:
        """The fake, not started yet."""
        raise NotImplementedError

    def base_url(self, upstream: FakeServer) -> str:
        """What the provider's `base_url` is for the fake."""
        return upstream.base_url

    def settings(self, upstream: FakeServer, key: str) -> dict[str, Any]:
        """The provider's config for the fake, authenticating with `key`."""
        return {"kind": self.name, "base_url": self.base_url(upstream), "api_key": key, "timeout_s": self.timeout_s}

    def deployment(self, upstream: FakeServer) -> dict[str, Any]:
        """The provider's config for the fake."""
        return self.settings(upstream, self.key)

    def misconfigured(self, deployment: dict[str, Any], upstream: FakeServer) -> dict[str, Any]:
        """The same provider with credentials its upstream refuses (the `misconfigured` model's)."""
        return self.settings(upstream, WRONG_KEY)

    def start(self, make: StackFactory, upstream: FakeServer) -> str:
        """A stack serving every model the scenarios call; its API's base URL."""
        deployment = self.deployment(upstream)
        providers = {self.name: deployment, "wrong-key": self.misconfigured(deployment, upstream),
                     "mock": {"kind": "mock", "tokens": 2}}
        models: dict[str, Any] = {public: [{"provider": self.name, "model": m}] for public, m in self.models.items()}
        models["misconfigured"] = [{"provider": "wrong-key", "model": self.models["chat"]}]
        if "overloaded" in self.models:
            models["overloaded-or-mock"] = [*models["overloaded"], {"provider": "mock", "model": "m"}]
        if "limited" in self.models:
            models["limited-or-mock"] = [*models["limited"], {"provider": "mock", "model": "m"}]
        return make(providers, models).up(self.name, "wrong-key", "mock")

    # The hooks of the scenarios a provider declares; `upstream.requests[-1]` is what it received last.

    def check_chat(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        raise NotImplementedError

    def check_stream(self, upstream: FakeServer, request: Request, chunks: list[ChatCompletionChunk]) -> None:
        raise NotImplementedError

    def check_tool_call(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        raise NotImplementedError

    def check_forced_tool_call(self, upstream: FakeServer, request: Request, final: ChatCompletion) -> None:
        raise NotImplementedError

    def check_parallel_tool_calls(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        raise NotImplementedError

    def check_parallel_tool_calls_stream(self, upstream: FakeServer, request: Request, final: ChatCompletion,
                                         chunks: list[ChatCompletionChunk]) -> None:
        raise NotImplementedError

    def check_one_tool_call(self, upstream: FakeServer) -> None:
        raise NotImplementedError

    def check_tool_results(self, upstream: FakeServer, calls: list[ChatCompletionMessageToolCall],
                           reply: ChatCompletion) -> None:
        raise NotImplementedError

    def check_missing_tool_result(self, calls: list[ChatCompletionMessageToolCall],
                                  error: openai.BadRequestError) -> None:
        """`error`: the answer to the same turn without the last call's result."""
        raise NotImplementedError

    def check_image(self, upstream: FakeServer, request: Request, answer: Answer) -> None:
        raise NotImplementedError

    def check_json_object(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        raise NotImplementedError

    def check_json_schema(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        raise NotImplementedError

    def check_max_tokens(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        raise NotImplementedError

    def check_stop_sequences(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        raise NotImplementedError

    def check_reasoning(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        """`reply`: the thinking model's answer to a tool result turn, after its two calls."""
        raise NotImplementedError


# ---------------------------------------------------------------- reading answers


def text_of(answer: Answer) -> str:
    if isinstance(answer, ChatCompletion):
        return answer.choices[0].message.content or ""
    return "".join(c.choices[0].delta.content or "" for c in answer if c.choices)


def calls_of(completion: ChatCompletion) -> list[tuple[str, Any]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in completion.choices[0].message.tool_calls or []]


def last(upstream: FakeServer) -> RecordedRequest:
    return upstream.requests[-1]
