"""Provider settings: one Struct per provider `kind`, a tagged union in config.

Each knows its defaults, including what its deployments can do
(`capabilities()`), so routing can decide without importing any adapter.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta

from broker.config.types import Secret, Strict
from broker.routing.capabilities import Capabilities
from broker.routing.profiles import PROFILES


class _Pool(Strict, kw_only=True):
    """What every HTTP upstream has: its connection pool, timeouts, extra headers and retries."""

    concurrency: int = 64  # jobs in flight per worker process = pooled keep-alive connections
    # Positive: aiohttp reads 0 as "no timeout at all".
    timeout_s: Annotated[float, Meta(gt=0, le=604_800)] = 600.0
    connect_timeout_s: Annotated[float, Meta(gt=0, le=604_800)] = 5.0
    headers: dict[str, str] = {}
    # Retries of a failed call (429, 5xx, timeouts...) on this deployment, with backoff and honouring
    # Retry-After, when the job has no other deployment left to fail over to (broker/routing/failover.py).
    max_retries: Annotated[int, Meta(ge=0, le=10)] = 1


class _HTTPProvider(_Pool, kw_only=True):
    api_key: Secret | None = None


class OpenAIProvider(_HTTPProvider, tag_field="kind", tag="openai", kw_only=True):
    """Any OpenAI-compatible upstream; `profile` names the server's quirks (broker/routing/profiles.py)."""

    base_url: str
    profile: str = "generic"
    # Ask the upstream for a usage chunk on streams (we account by it); off for servers that reject it.
    stream_usage: bool = True
    # The upstream serves POST /responses itself (OpenAI, Azure OpenAI, vLLM, Ollama): /v1/responses requests
    # go up as the client sent them instead of as Chat, and may use what only it runs (workers/responses.py).
    responses_api: bool = False

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; known: {', '.join(sorted(PROFILES))}")

    def capabilities(self) -> Capabilities:
        capabilities = PROFILES[self.profile].capabilities
        return msgspec.structs.replace(capabilities, responses_api=True) if self.responses_api else capabilities


class EntraAuth(Strict, kw_only=True):
    """A Microsoft Entra ID app (service principal) that gets Azure OpenAI bearer tokens by the OAuth2
    client-credentials grant (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow)."""

    tenant_id: Annotated[str, Meta(min_length=1)]
    client_id: Annotated[str, Meta(min_length=1)]
    client_secret: Secret
    scope: str = "https://cognitiveservices.azure.com/.default"
    # Default https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token; set it for a sovereign
    # cloud's authority (login.microsoftonline.us, login.chinacloudapi.cn) or a test's fake.
    token_url: str | None = None

    def endpoint(self) -> str:
        return self.token_url or f"https://login.microsoftonline.com/{self.tenant_id}/oauth2/v2.0/token"


# `v1`, or a dated version such as 2024-10-21 or 2025-04-01-preview.
_API_VERSION = r"^(v1|\d{4}-\d{2}-\d{2}(-preview)?)$"


class AzureProvider(_HTTPProvider, tag_field="kind", tag="azure", kw_only=True):
    """Azure OpenAI: the OpenAI-compatible adapter with Azure's URLs, auth and content-filter results.

    `api_version: v1` speaks the v1 API (`{endpoint}/openai/v1/chat/completions`, the deployment in the
    body's `model`); a dated version speaks the classic one (`{endpoint}/openai/deployments/{deployment}/
    chat/completions?api-version=...`). A deployment's `model` is the Azure deployment name. Auth is
    exactly one of `api_key` (the `api-key` header), `bearer_token` (a static Entra token) or `entra`.
    """

    endpoint: str  # https://<resource>.openai.azure.com (or .cognitiveservices.azure.com)
    api_version: Annotated[str, Meta(pattern=_API_VERSION)] = "v1"
    bearer_token: Secret | None = None
    entra: EntraAuth | None = None
    stream_usage: bool = True  # off for API versions before 2024-09-01, which refuse stream_options
    # The deployments serve POST /responses themselves (workers/responses.py), as OpenAI's do.
    responses_api: bool = False
    # Deployment name → the model it runs, for the shipped price table (broker/money/pricing.py)
    # when the names differ: {prod-chat: gpt-4o}.
    base_models: dict[str, str] = {}

    def __post_init__(self) -> None:
        given = [name for name in ("api_key", "bearer_token", "entra") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of `api_key`, `bearer_token` or `entra`"
                             + (f" (got {' and '.join(given)})" if given else ""))

    @property
    def v1(self) -> bool:
        return self.api_version == "v1"

    def capabilities(self) -> Capabilities:
        # Images and audio (transcriptions, translations, speech) as Azure serves them for its DALL·E,
        # gpt-image, Whisper, gpt-4o-transcribe and TTS deployments
        # (https://learn.microsoft.com/azure/ai-foundry/openai/reference); Azure has no moderations endpoint.
        return Capabilities(completions=True, embeddings=True, responses_api=self.responses_api, images=True,
                            transcriptions=True, speech=True)


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


class BedrockProvider(_HTTPProvider, tag_field="kind", tag="bedrock", kw_only=True):
    """AWS Bedrock's Converse API (`POST /model/{modelId}/converse` and `/converse-stream`).

    Requests are signed with SigV4: with `access_key_id` + `secret_access_key` (+ `session_token`) when
    given, else with the standard AWS chain as botocore resolves it (environment, `profile` and the shared
    files, web identity, ECS and instance roles), refreshed as they near expiry. `api_key` is a Bedrock
    API key instead (a bearer token, https://docs.aws.amazon.com/bedrock/latest/userguide/api-keys.html).

    A deployment of a reranker (`cohere.rerank-v3-5:0`, `amazon.rerank-v1:0`) serves POST /v1/rerank through
    InvokeModel when it says so, `capabilities: {rerank: true}`, as an OpenAI-compatible server's does: the
    kind's defaults describe its chat models, and a model id is not guessed at when routing.
    """

    region: str
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None
    profile: str | None = None  # a named profile of the shared AWS files, for the chain
    endpoint_url: str | None = None  # default https://bedrock-runtime.{region}.amazonaws.com (a VPC endpoint...)

    def __post_init__(self) -> None:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both `access_key_id` and `secret_access_key`, or neither (the AWS chain)")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("`session_token` goes with `access_key_id` and `secret_access_key`")
        if sum(x is not None for x in (self.access_key_id, self.profile, self.api_key)) > 1:
            raise ValueError("give one of `access_key_id`, `profile` and `api_key`")

    @property
    def base_url(self) -> str:
        return (self.endpoint_url or f"https://bedrock-runtime.{self.region}.amazonaws.com").rstrip("/")

    def capabilities(self) -> Capabilities:
        # Converse takes images as bytes (or S3 locations) only: a request with an image URL goes elsewhere.
        return Capabilities(completions=False, embeddings=False, json_object=False, json_schema=False,
                            image_urls=False)


# Both go into the upstream's host name and path: a stray "/" or "." would send the call elsewhere.
_LOCATION = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_PROJECT = re.compile(r"[a-z0-9][a-z0-9:.-]{0,62}")  # ids, numbers, and legacy "example.com:project" ids


class VertexProvider(_Pool, tag_field="kind", tag="vertex", kw_only=True):
    """Google Vertex AI: one project and location, one publisher's models.

    `publisher: google` serves Gemini through generateContent (the `gemini` kind's translation);
    `publisher: anthropic` serves Claude through rawPredict (the `anthropic` kind's). The publisher is
    said, not guessed from model ids, because it decides the wire format and what /v1/messages does.
    Credentials: a service-account key file, else application-default credentials
    (https://cloud.google.com/docs/authentication/application-default-credentials).
    """

    project: str
    location: str = "global"  # "global", a region ("us-east5"), or a multi-region ("us", "eu")
    publisher: Literal["google", "anthropic"] = "google"
    credentials_file: str | None = None  # a service-account JSON key; none: application-default credentials
    # The API root, `.../v1`; derived from `location` when unset (tests point it at a fake).
    base_url: str | None = None
    # Claude only: the body's `anthropic_version`, and max_tokens when the client sends none.
    anthropic_version: str = "vertex-2023-10-16"
    default_max_tokens: int = 4096

    def __post_init__(self) -> None:
        if not _PROJECT.fullmatch(self.project):
            raise ValueError(f"`project` {self.project!r} is not a Google Cloud project id")
        if not _LOCATION.fullmatch(self.location):
            raise ValueError(f"`location` {self.location!r} is not a Vertex AI location (e.g. global, us-central1)")

    def capabilities(self) -> Capabilities:
        return Capabilities(completions=False, embeddings=self.publisher == "google")


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
        return Capabilities(completions=True, embeddings=True, images=True, moderations=True, transcriptions=True,
                            speech=True, rerank=True)


ProviderConfig = (OpenAIProvider | AzureProvider | AnthropicProvider | GeminiProvider | BedrockProvider
                  | VertexProvider | CohereProvider | MockProvider)
KINDS = sorted(str(t.__struct_config__.tag) for t in get_args(ProviderConfig))
