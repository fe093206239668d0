"""The `bedrock` provider in the conformance suite, against tests/fakes/bedrock_upstream.py.

The fake checks every SigV4 signature with botocore and enforces Converse's request rules, so an answer
proves both the signing and the translation; what it recorded is checked as Converse's wire format. The
chat model is a cross-region inference profile, so every scenario also proves the model id's
path encoding. Bedrock-only behaviour (credentials, frames, guardrails, thinking) is in test_bedrock.py.
"""

from __future__ import annotations

from typing import Any

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageToolCall,
)

from tests.fakes.bedrock_sigv4 import Keys
from tests.fakes.bedrock_upstream import REGION, BedrockServer
from tests.fakes.server import FakeServer
from tests.providers.case import (
    WRONG_KEY,
    ProviderCase,
    Request,
    Scenario,
    calls_of,
    last,
    text_of,
)
from tests.stacks import StackFactory

S = Scenario
PROFILE = "us.anthropic.claude-3-5-haiku-20241022-v1:0"


class BedrockCase(ProviderCase):
    name = "bedrock"
    access_key_id = "AKIAIOSFODNN7EXAMPLE"
    key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # the secret access key
    # Not served by Converse: n, parallel_tool_calls false, JSON modes, embeddings; image URLs are routed
    # elsewhere (REFUSED), reasoning is not returned, and a guardrail's answer keeps its text (test_bedrock.py).
    scenarios = frozenset(S) - {S.ONE_TOOL_CALL, S.IMAGE, S.JSON_OBJECT, S.JSON_SCHEMA, S.REASONING,
                                S.CONTENT_FILTER, S.EMBEDDINGS}
    models = {"chat": PROFILE, "bad-request": "fake.invalid", "limited": "fake.throttled",
              "overloaded": "fake.unavailable", "broken": "fake.broken", "dies-midway": "fake.dies-midway",
              "slow": "fake.slow", "plain-id": "anthropic.claude-3-5-haiku-20241022-v1:0",
              "nova": "amazon.nova-lite-v1:0", "llama": "meta.llama3-1-8b-instruct-v1:0",
              "thinking": "us.anthropic.claude-3-7-sonnet-20250219-v1:0", "filtered": "fake.filtered",
              "guardrail": "fake.guardrail", "corrupt": "fake.corrupt", "not-ready": "fake.not-ready"}
    timeout_s = 2
    cities = ("Paris", "London")
    bad_request_says = "extraneous key [fake] is not permitted"
    rate_limited_says, retry_after = "ThrottlingException", ""  # Bedrock sends no Retry-After
    overloaded_says = "ServiceUnavailableException"
    wrong_key_says = "InvalidSignatureException"
    midstream = ("You said: he", "ModelStreamErrorException")
    refused = ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
        "messages[0].content[0].image_url.url")
    upstream_rule = ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100_000}, None,
                     "exceeds the model limit of 8192")

    def serve(self) -> FakeServer:
        return BedrockServer(Keys(REGION, {self.access_key_id: (self.key, None)}))

    def deployment(self, upstream: FakeServer, **changes: Any) -> dict[str, Any]:
        return {"kind": "bedrock", "region": REGION, "endpoint_url": upstream.base_url, "timeout_s": self.timeout_s,
                "access_key_id": self.access_key_id, "secret_access_key": self.key, **changes}

    def start(self, make: StackFactory, upstream: FakeServer) -> str:
        providers = {self.name: self.deployment(upstream), "wrong-key": self.deployment(upstream, secret_access_key=WRONG_KEY),
                     "mock": {"kind": "mock", "tokens": 2}}
        models: dict[str, Any] = {public: [{"provider": self.name, "model": m}] for public, m in self.models.items()}
        models["misconfigured"] = [{"provider": "wrong-key", "model": PROFILE}]
        models["overloaded-or-mock"] = [*models["overloaded"], {"provider": "mock", "model": "m"}]
        models["chat-or-mock"] = [*models["chat"], {"provider": "mock", "model": "m"}]
        return make(providers, models).up(self.name, "wrong-key", "mock")

    def check_chat(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        sent = last(upstream)
        assert sent.path == "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"  # as botocore encodes it
        assert sent.headers["authorization"].startswith(
            f"AWS4-HMAC-SHA256 Credential={self.access_key_id}/{sent.headers['x-amz-date'][:8]}/us-east-1/bedrock/")
        assert sent.body == {"messages": [{"role": "user", "content": [{"text": "hello there"}]}],
                             "system": [{"text": "Be brief, use the cache."}], "inferenceConfig": {"temperature": 0.3}}
        assert text_of(reply) == "You said: hello there"
        # 7 prompt words + 100 cache reads + 20 cache writes (the fake caches "cache" system prompts).
        assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (127, 4)
        assert reply.usage.prompt_tokens_details and reply.usage.prompt_tokens_details.cached_tokens == 100

    def check_stream(self, upstream: FakeServer, request: Request, chunks: list[ChatCompletionChunk]) -> None:
        sent = last(upstream)
        assert sent.path.endswith("v1%3A0/converse-stream") and "stream" not in sent.body
        assert sent.headers["accept"] == "application/vnd.amazon.eventstream"

    def check_tool_call(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        assert last(upstream).body["toolConfig"] == {"tools": [{"toolSpec": {
            "name": "get_weather", "description": "Current weather in a city",
            "inputSchema": {"json": request["tools"][0]["function"]["parameters"]}}}]}
        assert text_of(reply) == "I'll check the weather."
        assert calls_of(reply) == [("get_weather", {"city": "Paris"})]
        assert all(c.id.startswith("tooluse_") for c in reply.choices[0].message.tool_calls or [])

    def check_forced_tool_call(self, upstream: FakeServer, request: Request, final: ChatCompletion) -> None:
        assert last(upstream).body["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
        assert calls_of(final) == [("get_weather", {"city": "Paris"})]

    def check_parallel_tool_calls(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        assert text_of(reply) == "I'll check the weather."

    def check_parallel_tool_calls_stream(self, upstream: FakeServer, request: Request, final: ChatCompletion,
                                         chunks: list[ChatCompletionChunk]) -> None:
        assert text_of(final) == "I'll check the weather."

    def check_tool_results(self, upstream: FakeServer, calls: list[ChatCompletionMessageToolCall],
                           reply: ChatCompletion) -> None:
        assert text_of(reply) == 'Tool results: {"temp_c": 15}; {"temp_c": 22}'
        turns = last(upstream).body["messages"]
        assert [t["role"] for t in turns] == ["user", "assistant", "user"]  # both results in one user turn
        assert [next(iter(b)) for b in turns[1]["content"]] == ["text", "toolUse", "toolUse"]
        assert turns[1]["content"][1]["toolUse"] == {"toolUseId": calls[0].id, "name": "get_weather",
                                                     "input": {"city": "Paris"}}
        assert turns[2]["content"] == [
            {"toolResult": {"toolUseId": calls[0].id, "content": [{"text": '{"temp_c": 15}'}]}},
            {"toolResult": {"toolUseId": calls[1].id, "content": [{"text": '{"temp_c": 22}'}]}}]

    def check_missing_tool_result(self, calls: list[ChatCompletionMessageToolCall],
                                  error: openai.BadRequestError) -> None:
        assert f"Expected toolResult blocks at messages.2.content for the following Ids: {calls[1].id}" in error.message

    def check_max_tokens(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        assert last(upstream).body["inferenceConfig"] == {"maxTokens": 3}
        assert text_of(reply) == "You said: one"

    def check_stop_sequences(self, upstream: FakeServer, reply: ChatCompletion) -> None:
        assert last(upstream).body["inferenceConfig"] == {"stopSequences": ["four"]}
        assert text_of(reply) == "You said: one two three "
