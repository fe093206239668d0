"""Cohere v2 request Structs and conversation rules for the fake upstream.

Written from Cohere's OpenAPI document (`cohere-openapi.yaml` in cohere-ai/cohere-developer-experience:
`/v2/chat`, `/v2/embed`, `/v2/rerank`, the `ChatMessageV2` union), not from the adapter's Structs.
Strict on purpose: unknown fields and values outside the documented ranges are refused, and
`validate` checks what the API checks of a conversation (every tool call answered by a tool
message with its id, tools and response_format not together).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class TextContent(_Strict, tag_field="type", tag="text"):
    text: str


class ImageUrl(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ImageContent(_Strict, tag_field="type", tag="image_url"):
    image_url: ImageUrl


class ToolCallFunction(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"]
    function: ToolCallFunction


class SystemMessage(_Strict, tag_field="role", tag="system"):
    content: str | list[TextContent]


class UserMessage(_Strict, tag_field="role", tag="user"):
    content: str | list[TextContent | ImageContent]


class AssistantMessage(_Strict, tag_field="role", tag="assistant"):
    content: str | list[TextContent] | None = None
    tool_calls: list[ToolCall] = []
    tool_plan: str | None = None


class ToolMessage(_Strict, tag_field="role", tag="tool"):
    tool_call_id: str
    content: str | list[dict[str, Any]]


class FunctionDef(_Strict):
    name: str
    parameters: dict[str, Any]
    description: str = ""


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class ResponseFormat(_Strict):
    type: Literal["text", "json_object"]
    json_schema: dict[str, Any] | None = None


class ChatRequest(_Strict):
    model: str
    messages: Annotated[list[SystemMessage | UserMessage | AssistantMessage | ToolMessage], Meta(min_length=1)]
    stream: bool = False
    tools: list[Tool] = []
    strict_tools: bool | None = None
    tool_choice: Literal["REQUIRED", "NONE"] | None = None
    response_format: ResponseFormat | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    stop_sequences: Annotated[list[str], Meta(max_length=5)] = []
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    p: Annotated[float, Meta(ge=0.01, le=0.99)] | None = None
    k: Annotated[int, Meta(ge=0, le=500)] | None = None
    seed: Annotated[int, Meta(ge=0)] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


class EmbedRequest(_Strict):
    model: str
    input_type: Literal["search_document", "search_query", "classification", "clustering", "image"]
    texts: Annotated[list[str], Meta(min_length=1, max_length=96)]
    embedding_types: list[Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]] = msgspec.field(
        default_factory=lambda: ["float"])
    output_dimension: int | None = None
    truncate: Literal["NONE", "START", "END"] = "END"


class RerankRequest(_Strict):
    model: str
    query: str
    documents: Annotated[list[str], Meta(min_length=1)]
    top_n: Annotated[int, Meta(ge=1)] | None = None
    max_tokens_per_doc: Annotated[int, Meta(ge=1)] | None = None


def validate(req: ChatRequest) -> str | None:
    """The first rule of a conversation the API would refuse, in its words, or None."""
    if req.tools and req.response_format is not None and req.response_format.type == "json_object":
        return "invalid request: response_format is not supported with tools"
    if req.tool_choice is not None and not req.tools:
        return "invalid request: tool_choice requires tools"
    if any(t.function.parameters.get("type") != "object" for t in req.tools):
        return "invalid request: tool parameters must be a JSON schema of type object"
    pending: list[str] = []
    for i, m in enumerate(req.messages):
        if isinstance(m, ToolMessage):
            if m.tool_call_id not in pending:
                return f"invalid request: messages[{i}] answers tool call {m.tool_call_id!r}, which is not pending"
            pending.remove(m.tool_call_id)
            continue
        if pending:
            return "invalid request: all tool calls must have a corresponding tool result"
        if isinstance(m, AssistantMessage):
            if not m.tool_calls and not m.content:
                return f"invalid request: messages[{i}] needs content or tool_calls"
            pending = [c.id for c in m.tool_calls]
    if pending:
        return "invalid request: all tool calls must have a corresponding tool result"
    return None
