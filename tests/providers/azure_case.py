"""The `azure` provider in the conformance suite, against tests/fakes/azure_upstream.py, twice:
the classic API with Entra ID tokens (`azure`), and the v1 API with an `api-key` (`azure-v1`).

Behind Azure's door the fake is the OpenAI fake, so the OpenAI case's checks hold, with the
official SDK's `AzureOpenAI` client talking to the fake directly as the reference: the gateway
must be invisible except for the model name, the ids, and the prompt's filter results moved from
Azure's opening chunk of no choices onto the first chunk. Azure's own cases (content filter,
retry-after-ms, token refresh, the other URL and auth combinations) are in test_azure.py.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.fakes.azure_upstream import AzureServer
from tests.fakes.server import FakeServer
from tests.providers.case import Request, last
from tests.providers.openai_case import OpenAICase

API_KEY = "az-upstream-key-0123456789abcdef"  # the fake resource's key
TENANT, CLIENT = "7f3e2a10-tenant", "0b1c2d3e-client"
API_VERSION = "2024-10-21"


def azure(upstream: FakeServer) -> AzureServer:
    return cast(AzureServer, upstream)


class AzureCase(OpenAICase):
    """Classic URLs (deployment in the path, api-version), Entra ID client credentials."""

    name = "azure"
    key = "entra-client-secret-abcdef123456"  # what the stack authenticates with: here the client secret
    models = {**OpenAICase.models, "limited": "limited", "filtered-answer": "filtered-answer",
              "filtered-prompt": "filtered-prompt", "annotated": "annotated"}
    rate_limited_says, retry_after = "exceeded token rate limit", "2"  # retry-after-ms 1200, rounded up
    wrong_key_says = "AADSTS7000215"
    api_version: ClassVar[str] = API_VERSION

    def serve(self) -> FakeServer:
        return AzureServer(api_key=API_KEY, tenant_id=TENANT, client_id=CLIENT, client_secret=self.key)

    def settings(self, upstream: FakeServer, key: str) -> dict[str, Any]:
        return {"kind": "azure", "endpoint": azure(upstream).endpoint, "api_version": self.api_version,
                "timeout_s": self.timeout_s, **self.auth(upstream, key)}

    def auth(self, upstream: FakeServer, key: str) -> dict[str, Any]:
        return {"entra": {"tenant_id": TENANT, "client_id": CLIENT, "client_secret": key,
                          "token_url": azure(upstream).token_url}}

    def path(self, operation: str) -> str:
        return f"/openai/deployments/fake-model/{operation}?api-version={self.api_version}"

    def check_auth(self, upstream: FakeServer, headers: dict[str, str]) -> None:
        scheme, _, token = headers["authorization"].partition(" ")
        assert scheme == "Bearer" and azure(upstream).tenant.valid(token) and "api-key" not in headers

    def direct(self, upstream: FakeServer) -> openai.OpenAI:
        return openai.AzureOpenAI(azure_endpoint=azure(upstream).endpoint, api_key=API_KEY, api_version=API_VERSION,
                                  max_retries=0)

    def check_chat(self, upstream: FakeServer, request: Request, reply: ChatCompletion) -> None:
        sent = last(upstream)
        assert sent.path == self.path("chat/completions")
        assert sent.body["model"] == "fake-model" and sent.body["temperature"] == 0.3 and sent.body["seed"] == 7
        assert sent.body["messages"] == request["messages"] and "stream_options" not in sent.body
        self.check_auth(upstream, sent.headers)
        expected = self.expected(upstream, request)
        assert reply.choices[0].message.content == expected.choices[0].message.content
        assert reply.choices[0].finish_reason == expected.choices[0].finish_reason == "stop"
        assert reply.usage == expected.usage
        # Azure's filter verdicts reach the client as Azure gave them.
        assert reply.model_extra and expected.model_extra
        assert reply.model_extra["prompt_filter_results"] == expected.model_extra["prompt_filter_results"]
        assert reply.choices[0].model_extra == expected.choices[0].model_extra != {}

    def check_stream(self, upstream: FakeServer, request: Request, chunks: list[ChatCompletionChunk]) -> None:
        sent = last(upstream)
        assert sent.path == self.path("chat/completions") and sent.body["stream_options"] == {"include_usage": True}
        expected = list(self.direct(upstream).chat.completions.create(model="fake-model", **request))
        opening, *rest = expected
        assert opening.choices == [] and opening.model_extra
        assert chunks[0].model_extra and chunks[0].model_extra["prompt_filter_results"] == \
            opening.model_extra["prompt_filter_results"]
        assert len(chunks) == len(rest)
        assert [(c.choices[0].delta, c.choices[0].finish_reason, _filter_results(c)) for c in chunks if c.choices] == \
            [(c.choices[0].delta, c.choices[0].finish_reason, _filter_results(c)) for c in rest if c.choices]
        assert chunks[-1].usage == rest[-1].usage


def _filter_results(chunk: ChatCompletionChunk) -> Any:
    return (chunk.choices[0].model_extra or {}).get("content_filter_results")


class AzureV1Case(AzureCase):
    """The v1 API (no api-version; the deployment in the body), the `api-key` header."""

    name = "azure-v1"
    key = API_KEY
    wrong_key_says = "Access denied due to invalid subscription key"
    api_version = "v1"

    def settings(self, upstream: FakeServer, key: str) -> dict[str, Any]:
        # The endpoint as Azure's portal shows it for v1: the adapter must not double the path.
        return {**super().settings(upstream, key), "endpoint": azure(upstream).endpoint + "/openai/v1/"}

    def auth(self, upstream: FakeServer, key: str) -> dict[str, Any]:
        return {"api_key": key}

    def path(self, operation: str) -> str:
        return f"/openai/v1/{operation}"

    def check_auth(self, upstream: FakeServer, headers: dict[str, str]) -> None:
        assert headers["api-key"] == self.key and "authorization" not in headers
