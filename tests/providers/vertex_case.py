"""The `vertex` provider in the conformance suite, both publishers, against tests/fakes/vertex_upstream.py.

Gemini on Vertex speaks Gemini and Claude on Vertex speaks Anthropic's Messages API, so each case is
its publisher's case (its checks of the body the fake received hold word for word) with Vertex's
host, path and credentials: a service-account key generated for the test, whose tokens the fake
mints and checks. The misconfigured deployment's key is one the token endpoint does not trust.
"""

from __future__ import annotations

import hashlib
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.fakes.server import FakeServer
from tests.fakes.vertex_upstream import VERTEX_VERSION, VertexServer
from tests.providers.anthropic_case import AnthropicCase
from tests.providers.case import Request, Scenario, last, text_of
from tests.providers.gemini_case import GeminiCase

S = Scenario
PROJECT, LOCATION = "broker-tests-4821", "us-east5"
ACCOUNT = f"broker@{PROJECT}.iam.gserviceaccount.com"
MODELS = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers"


class _OnVertex:
    """What both publishers' cases share: the fake, the config, a bearer token it minted."""

    name: str
    publisher: str
    timeout_s: float
    key = hashlib.sha1(ACCOUNT.encode()).hexdigest()  # the key's id: it must not show either
    wrong_key_says = "Invalid JWT Signature"  # the token endpoint's refusal of the untrusted key

    def serve(self) -> FakeServer:
        return VertexServer(project=PROJECT, location=LOCATION)

    def deployment(self, upstream: FakeServer) -> dict[str, Any]:
        assert isinstance(upstream, VertexServer)
        return {"kind": "vertex", "project": PROJECT, "location": LOCATION, "publisher": self.publisher,
                "credentials_file": str(upstream.key_file(self.name)), "base_url": upstream.base_url,
                "timeout_s": self.timeout_s}

    def misconfigured(self, deployment: dict[str, Any], upstream: FakeServer) -> dict[str, Any]:
        assert isinstance(upstream, VertexServer)
        return {**deployment, "credentials_file": str(upstream.key_file(f"{self.name}-stale", trusted=False))}

    @staticmethod
    def authorised(upstream: FakeServer) -> None:
        headers = last(upstream).headers
        assert headers["authorization"].startswith("Bearer ya29.fake-")
        assert "x-goog-api-key" not in headers and "x-api-key" not in headers


class VertexGeminiCase(_OnVertex, GeminiCase):
    name = "vertex"
    publisher = "google"
    scenarios = GeminiCase.scenarios | {S.SERVER_ERROR}
    models = {**GeminiCase.models, "chat": "gemini-2.0-flash", "limited": "quota-exhausted", "broken": "fail-500",
              "embed": "text-embedding-005"}
    rate_limited_says, retry_after = "RESOURCE_EXHAUSTED", "7"

    def check_chat(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        assert last(upstream).path == f"{MODELS}/google/models/gemini-2.0-flash:generateContent"
        self.authorised(upstream)
        sent = last(upstream).body
        assert sent["systemInstruction"] == {"parts": [{"text": "Be brief, use the cache."}]}
        assert sent["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 50}
        assert text_of(reply) == "You said: hello there"
        assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (7, 4)

    def check_stream(self, upstream: FakeServer, request: Request, chunks: list[ChatCompletionChunk]) -> None:
        assert last(upstream).path == f"{MODELS}/google/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        self.authorised(upstream)
        super().check_stream(upstream, request, chunks)


class VertexClaudeCase(_OnVertex, AnthropicCase):
    name = "vertex-claude"
    publisher = "anthropic"
    # Claude on Vertex refuses URL image sources: `refused` shows one never leaves; test_vertex.py the rest.
    scenarios = AnthropicCase.scenarios - {S.IMAGE}
    models = {**AnthropicCase.models, "chat": "claude-3-5-haiku@20241022", "limited": "quota-exhausted"}
    rate_limited_says, retry_after = "RESOURCE_EXHAUSTED", "7"  # Vertex's quota, in Google's shape
    refused = ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
        "messages[0].content[1].image_url.url")

    def check_chat(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        sent = last(upstream)
        assert sent.path == f"{MODELS}/anthropic/models/claude-3-5-haiku@20241022:rawPredict"
        self.authorised(upstream)
        assert "anthropic-version" not in sent.headers
        assert sent.body == {"anthropic_version": VERTEX_VERSION, "max_tokens": 4096,
                             "system": "Be brief, use the cache.",
                             "messages": [{"role": "user", "content": "hello there"}], "temperature": 0.3}
        assert text_of(reply) == "You said: hello there"
        assert reply.usage is not None and reply.usage.prompt_tokens == 127 and reply.usage.completion_tokens == 4

    def check_stream(self, upstream: FakeServer, request: Request, chunks: list[ChatCompletionChunk]) -> None:
        assert last(upstream).path == f"{MODELS}/anthropic/models/claude-3-5-haiku@20241022:streamRawPredict"
        self.authorised(upstream)
        super().check_stream(upstream, request, chunks)
