"""What a deployment can do, and what a request needs: routing matches the two.

Capabilities come from the provider kind (and, for OpenAI-compatible servers,
their profile: broker/routing/profiles.py), and a deployment in config may override
any of them. A request is only ever routed to a deployment that has every
capability it needs, so adapters never receive requests they cannot serve.
"""

from __future__ import annotations

import math

import msgspec

from broker.queue.payloads import AnyRequest, MediaRequest
from broker.wire import CompletionRequest, EmbeddingRequest, ImageUrlPart
from broker.wire.rerank import RerankRequest


class Capabilities(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    chat: bool = True
    completions: bool = False  # legacy /v1/completions
    embeddings: bool = False
    tools: bool = True
    vision: bool = True
    # Images given by URL, not inline as data: URLs (Bedrock's Converse takes bytes only).
    image_urls: bool = True
    json_object: bool = True  # response_format {"type": "json_object"}
    json_schema: bool = True  # response_format {"type": "json_schema"} (structured outputs)
    max_context_tokens: int | None = None
    # Serves OpenAI's Responses API itself (the provider's `responses_api`): /v1/responses goes up as sent,
    # so built-in tools and OpenAI's own items (encrypted reasoning, web search calls) can be used.
    responses_api: bool = False
    # OpenAI's media endpoints (/v1/images/generations, /v1/moderations, /v1/audio/transcriptions and
    # /translations, /v1/audio/speech): off unless the provider kind or profile serves them.
    images: bool = False
    moderations: bool = False
    transcriptions: bool = False
    speech: bool = False
    # Serves POST /v1/rerank (workers/providers/base.py `RerankProvider`); off unless the kind or the deployment says.
    rerank: bool = False


class CapabilityOverrides(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A deployment's corrections to its provider's defaults (None keeps the default)."""

    chat: bool | None = None
    completions: bool | None = None
    embeddings: bool | None = None
    tools: bool | None = None
    vision: bool | None = None
    image_urls: bool | None = None
    json_object: bool | None = None
    json_schema: bool | None = None
    max_context_tokens: int | None = None
    images: bool | None = None
    moderations: bool | None = None
    transcriptions: bool | None = None
    speech: bool | None = None
    rerank: bool | None = None

    def apply(self, base: Capabilities) -> Capabilities:
        changes = {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not None}
        return msgspec.structs.replace(base, **changes) if changes else base


Request = AnyRequest  # what routing matches against capabilities


def needs(req: Request) -> dict[str, str]:
    """Capability → the request field that needs it (the 400's `param` if nobody has it)."""
    if isinstance(req, EmbeddingRequest):
        return {"embeddings": "model"}
    if isinstance(req, MediaRequest):
        return {req.capability: "model"}
    if isinstance(req, RerankRequest):
        return {"rerank": "model"}
    if isinstance(req, CompletionRequest):
        return {"completions": "model"}
    required = {"chat": "model"}
    if req.tools:
        required["tools"] = "tools"
    if isinstance(req.response_format, dict) and req.response_format.get("type") in ("json_object", "json_schema"):
        required[req.response_format["type"]] = "response_format"
    if any(isinstance(m.content, list) and any(isinstance(p, ImageUrlPart) for p in m.content)
           for m in req.messages):
        required["vision"] = "messages"
        linked = next((f"messages[{i}].content[{j}].image_url.url" for i, m in enumerate(req.messages)
                       if isinstance(m.content, list) for j, p in enumerate(m.content)
                       if isinstance(p, ImageUrlPart) and not p.image_url.url.startswith("data:")), None)
        if linked is not None:
            required["image_urls"] = linked
    return required


# Output tokens a request without a limit is expected to produce: a typical chat answer.
DEFAULT_OUTPUT_TOKENS = 512


def output_limit_tokens(req: Request) -> int:
    """The most output a request asks for: its limit (`max_completion_tokens` / `max_tokens`, else
    DEFAULT_OUTPUT_TOKENS) times its choices (`n`; completions: max(n, best_of)). Embeddings, media, reranks: 0."""
    if isinstance(req, EmbeddingRequest | MediaRequest | RerankRequest):
        return 0
    limit = req.output_limit()
    choices = req.n if isinstance(req.n, int) else 1
    if isinstance(req, CompletionRequest) and isinstance(req.best_of, int):
        choices = max(choices, req.best_of)
    return choices * (DEFAULT_OUTPUT_TOKENS if limit is None else limit)


def estimate_tokens(req: Request) -> int:
    """A cheap prompt-size estimate (~4 characters a token) for context-window checks."""
    if isinstance(req, EmbeddingRequest):
        return sum(len(t) for t in req.texts()) // 4
    if isinstance(req, CompletionRequest):
        return sum(len(p) for p in req.prompts()) // 4
    if isinstance(req, MediaRequest):
        return req.prompt_chars() // 4
    if isinstance(req, RerankRequest):  # the query is read beside every document
        return sum(len(req.query) + len(t) for t in req.texts()) // 4
    return sum(len(m.text()) for m in req.messages) // 4 + 3 * len(req.messages)


# Cohere's definition (https://cohere.com/pricing, "What is a search unit?"): one search unit is a query with up
# to 100 documents to be ranked; a document longer than 500 tokens, the query included, is split into chunks
# of that size, each of which counts as a document.
SEARCH_UNIT_DOCUMENTS = 100
SEARCH_UNIT_CHUNK_TOKENS = 500


def estimate_search_units(req: Request) -> int:
    """The search units a rerank costs by Cohere's definition, from ~4 characters a token (0 for anything
    else): what is billed when the upstream does not say (every server but Cohere's own)."""
    if not isinstance(req, RerankRequest):
        return 0
    query = len(req.query) / 4
    chunks = sum(max(1, math.ceil((query + len(t) / 4) / SEARCH_UNIT_CHUNK_TOKENS)) for t in req.texts())
    return math.ceil(chunks / SEARCH_UNIT_DOCUMENTS)
