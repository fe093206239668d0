"""Cohere v2 payloads as msgspec Structs, from its OpenAPI document (`cohere-openapi.yaml` in
cohere-ai/cohere-developer-experience; https://docs.cohere.com/v2/reference/chat).

Requests leave UNSET fields out, so we never send a value the client did not ask for. Message,
content and tool kinds are tagged unions on `role` / `type`, as the API's discriminators are.
Responses declare only the fields the translation reads (citations, logprobs and the like are
skipped without building objects). Counts in `usage` are JSON numbers the API may write as
floats (`18.0` in its own examples), so they decode as floats.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

# ---------------------------------------------------------------- requests


class _Out(msgspec.Struct, omit_defaults=True, kw_only=True):
    pass


class TextContent(_Out, tag_field="type", tag="text"):
    text: str


class ImageUrl(_Out):
    url: str  # an https URL or a base64 data URI
    detail: str | UnsetType = UNSET  # auto | low | high


class ImageContent(_Out, tag_field="type", tag="image_url"):
    image_url: ImageUrl


class ToolCallFunction(_Out):
    name: str
    arguments: str  # a JSON string, as OpenAI's


class ToolCall(_Out, tag_field="type", tag="function"):
    id: str
    function: ToolCallFunction


class SystemMessage(_Out, tag_field="role", tag="system"):
    content: str


class UserMessage(_Out, tag_field="role", tag="user"):
    content: str | list[TextContent | ImageContent]


class AssistantMessage(_Out, tag_field="role", tag="assistant"):
    content: str | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET


class ToolMessage(_Out, tag_field="role", tag="tool"):
    tool_call_id: str
    content: str


ChatMessage = SystemMessage | UserMessage | AssistantMessage | ToolMessage


class FunctionDef(_Out):
    name: str
    parameters: dict[str, Any]  # required by the API: a JSON Schema
    description: str | UnsetType = UNSET


class Tool(_Out, tag_field="type", tag="function"):
    function: FunctionDef


class ResponseFormat(_Out):
    type: str  # text | json_object; a schema rides on json_object
    json_schema: dict[str, Any] | UnsetType = UNSET


class ChatRequest(_Out):
    model: str
    messages: list[ChatMessage]
    stream: bool = False
    tools: list[Tool] | UnsetType = UNSET
    tool_choice: str | UnsetType = UNSET  # REQUIRED | NONE
    response_format: ResponseFormat | UnsetType = UNSET
    max_tokens: int | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    p: float | UnsetType = UNSET
    k: int | UnsetType = UNSET
    seed: int | UnsetType = UNSET
    frequency_penalty: float | UnsetType = UNSET
    presence_penalty: float | UnsetType = UNSET


class EmbedRequest(_Out):
    model: str
    texts: list[str]  # at most 96 a call
    input_type: str
    embedding_types: list[str]
    output_dimension: int | UnsetType = UNSET


class RerankRequest(_Out):
    model: str
    query: str
    documents: list[str]
    top_n: int | UnsetType = UNSET
    max_tokens_per_doc: int | UnsetType = UNSET


# ---------------------------------------------------------------- responses (decode only)


class _In(msgspec.Struct, kw_only=True):
    pass


class BilledUnits(_In):
    input_tokens: float = 0
    output_tokens: float = 0
    search_units: float | None = None


class Tokens(_In):
    input_tokens: float = 0
    output_tokens: float = 0


class Usage(_In):
    billed_units: BilledUnits | None = None
    tokens: Tokens | None = None


class RespContent(_In):
    type: str = "text"  # text | thinking
    text: str = ""


class RespFunction(_In):
    name: str | None = None
    arguments: str | None = None


class RespToolCall(_In):
    id: str | None = None
    function: RespFunction | None = None


class RespMessage(_In):
    content: list[RespContent] = []
    tool_calls: list[RespToolCall] = []


class ChatResponse(_In):
    id: str = ""
    finish_reason: str = ""
    message: RespMessage = msgspec.field(default_factory=RespMessage)
    usage: Usage | None = None


class EventContent(_In):
    text: str | None = None  # `thinking` deltas carry `thinking` instead, which is not read


class EventMessage(_In):
    content: EventContent | None = None
    tool_calls: RespToolCall | None = None  # one call (start) or a fragment of its arguments (delta)


class EventDelta(_In):
    message: EventMessage | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None


class StreamEvent(_In):
    """Any event of a /v2/chat stream, told apart by `type` (message-start, content-delta, ...)."""

    type: str
    index: int = 0
    delta: EventDelta | None = None


class Meta(_In):
    billed_units: BilledUnits | None = None
    tokens: Tokens | None = None


class EmbeddingsByType(_In):
    floats: list[list[float]] = msgspec.field(default_factory=list, name="float")


class EmbedResponse(_In):
    embeddings: EmbeddingsByType
    meta: Meta | None = None


class RerankScore(_In):
    index: int
    relevance_score: float


class RerankResponse(_In):
    results: list[RerankScore]
    meta: Meta | None = None


class ErrorBody(_In):
    message: str = ""


encoder = msgspec.json.Encoder()
chat_decoder = msgspec.json.Decoder(ChatResponse)
event_decoder = msgspec.json.Decoder(StreamEvent)
embed_decoder = msgspec.json.Decoder(EmbedResponse)
rerank_decoder = msgspec.json.Decoder(RerankResponse)
error_decoder = msgspec.json.Decoder(ErrorBody)
