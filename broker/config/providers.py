"""Provider settings: one Struct per provider `kind`, a tagged union in config.

Each knows its defaults, including what its deployments can do
(`capabilities()`), so routing can decide without importing any adapter.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta

from broker.config.types import Secret, Strict
from broker.routing.capabilities import Capabilities
from broker.routing.profiles import PROFILES


class _HTTPProvider(Strict, kw_only=True):
    api_key: Secret | None = None
    concurrency: int = 64  # jobs in flight per worker process = pooled keep-alive connections
    # Positive: aiohttp reads 0 as "no timeout at all".
    timeout_s: Annotated[float, Meta(gt=0, le=604_800)] = 600.0
    connect_timeout_s: Annotated[float, Meta(gt=0, le=604_800)] = 5.0
    headers: dict[str, str] = {}
    # Retries of a failed call (429, 5xx, timeouts...) on this deployment, with backoff and honouring
    # Retry-After, when the job has no other deployment left to fail over to (broker/routing/failover.py).
    max_retries: Annotated[int, Meta(ge=0, le=10)] = 1


class OpenAIProvider(_HTTPProvider, tag_field="kind", tag="openai", kw_only=True):
    """Any OpenAI-compatible upstream; `profile` names the server's quirks (broker/routing/profiles.py)."""

    base_url: str
    profile: str = "generic"
    # Ask the upstream for a usage chunk on streams (we account by it); off for servers that reject it.
    stream_usage: bool = True
    api_version: str | None = None  # Azure only: the `api-version` query parameter
    # The upstream serves POST /responses itself (OpenAI, Azure OpenAI, vLLM, Ollama): /v1/responses requests
    # go up as the client sent them instead of as Chat, and may use what only it runs (workers/responses.py).
    responses_api: bool = False

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; known: {', '.join(sorted(PROFILES))}")
        if PROFILES[self.profile].azure and not self.api_version:
            raise ValueError("the azure profile needs `api_version`")

    def capabilities(self) -> Capabilities:
        capabilities = PROFILES[self.profile].capabilities
        return msgspec.structs.replace(capabilities, responses_api=True) if self.responses_api else capabilities


class AnthropicProvider(_HTTPProvider, tag_field="kind", tag="anthropic", kw_only=True):
    """Anthropic Messages API."""

    base_url: str = "https://api.anthropic.com"
    anthropic_version: str = "2023-06-01"
    # Anthropic requires max_tokens; used when the client sends none.
    default_max_tokens: int = 4096

    def capabilities(self) -> Capabilities:
        return Capabilities(completions=False, embeddings=False)


class GeminiProvider(_HTTPProvider, tag_field="kind", tag="gemini", kw_only=True):
    """Google Gemini (Developer API, generateContent / streamGenerateContent / embedContent)."""

    base_url: str = "https://generativelanguage.googleapis.com/v1beta"

    def capabilities(self) -> Capabilities:
        return Capabilities(completions=False, embeddings=True)


class CohereProvider(_HTTPProvider, tag_field="kind", tag="cohere", kw_only=True):
    """Cohere's v2 API: /v2/chat, /v2/embed, /v2/rerank (https://docs.cohere.com/v2/reference/chat)."""

    base_url: str = "https://api.cohere.com"
    # What /v2/embed's required `input_type` is for OpenAI-shaped requests, which cannot say:
    # search_document | search_query | classification | clustering.
    embed_input_type: Literal["search_document", "search_query", "classification", "clustering"] = "search_document"

    def capabilities(self) -> Capabilities:
        return Capabilities(completions=False, embeddings=True, rerank=True)


class MockProvider(Strict, tag_field="kind", tag="mock", kw_only=True):
    """Built-in fake LLM: deterministic text from the prompt, real usage numbers."""

    concurrency: int = 256
    tokens: int = 16
    token_delay_s: float = 0.0
    first_token_delay_s: float = 0.0

    def capabilities(self) -> Capabilities:
        return Capabilities(completions=True, embeddings=True, rerank=True)


ProviderConfig = OpenAIProvider | AnthropicProvider | GeminiProvider | CohereProvider | MockProvider
KINDS = sorted(str(t.__struct_config__.tag) for t in get_args(ProviderConfig))
