"""Anthropic Messages API wire Structs (https://docs.anthropic.com/en/api/messages, errors:
https://docs.anthropic.com/en/api/errors).

Request Structs carry only what we send; UNSET fields are left out of the JSON
because the API rejects unknown *and* null-valued optional fields alike
("Extra inputs are not permitted"). Response Structs declare only the fields we
read. Content blocks in responses and stream events are decoded into one loose
Struct keyed by `type` rather than a tagged union: new block types (thinking,
server tools, ...) appear without notice and must be skipped, not fail decoding.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

# ---------------------------------------------------------------- request


class _Out(msgspec.Struct, omit_defaults=True):
    """Base of request Structs: an UNSET field is not sent at all."""


class TextBlock(_Out, tag_field="type", tag="text"):
    text: str


class Base64Source(_Out, tag_field="type", tag="base64"):
    media_type: str
    data: str


class URLSource(_Out, tag_field="type", tag="url"):
    url: str


class ImageBlock(_Out, tag_field="type", tag="image"):
    source: Base64Source | URLSource


class ToolUseBlock(_Out, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]  # an object, where OpenAI has a JSON string


class ToolResultBlock(_Out, tag_field="type", tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] | UnsetType = UNSET


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock


class Turn(_Out):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class ToolDef(_Out):
    name: str
    input_schema: dict[str, Any]
    description: str | UnsetType = UNSET
    strict: bool | UnsetType = UNSET


class ToolChoice(_Out):
    type: Literal["auto", "any", "tool", "none"]
    name: str | UnsetType = UNSET
    disable_parallel_tool_use: bool | UnsetType = UNSET  # not accepted on type "none"


class Metadata(_Out):
    user_id: str


class MessagesRequest(_Out, kw_only=True):
    model: str
    max_tokens: int  # required by the API: there is no server-side default
    messages: list[Turn]
    system: str | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    top_k: int | UnsetType = UNSET
    tools: list[ToolDef] | UnsetType = UNSET
    tool_choice: ToolChoice | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    stream: bool | UnsetType = UNSET


# ---------------------------------------------------------------- response


class ContentBlock(msgspec.Struct):
    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    # Kept as raw JSON: it becomes OpenAI's `arguments` string without a decode/encode round trip.
    input: msgspec.Raw = msgspec.Raw(b"{}")


class AnthropicUsage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageResponse(msgspec.Struct):
    id: str = ""
    model: str = ""
    content: list[ContentBlock] = []
    stop_reason: str | None = None
    usage: AnthropicUsage = msgspec.field(default_factory=AnthropicUsage)


class ErrorDetail(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class ErrorEnvelope(msgspec.Struct):
    error: ErrorDetail | None = None


# ---------------------------------------------------------------- stream events


class StreamDelta(msgspec.Struct):
    """The `delta` of content_block_delta (text / partial_json) and message_delta (stop_reason)."""

    type: str = ""
    text: str = ""
    partial_json: str = ""
    stop_reason: str | None = None


class StreamEvent(msgspec.Struct):
    """Every event type's fields in one Struct: dispatch is on `type`, unknown types are ignored."""

    type: str
    message: MessageResponse | None = None  # message_start
    index: int = 0  # content_block_*
    content_block: ContentBlock | None = None  # content_block_start
    delta: StreamDelta | None = None  # content_block_delta, message_delta
    usage: AnthropicUsage | None = None  # message_delta (cumulative counts)
    error: ErrorDetail | None = None  # error


request_encoder = msgspec.json.Encoder()
response_decoder = msgspec.json.Decoder(MessageResponse)
event_decoder = msgspec.json.Decoder(StreamEvent)
error_decoder = msgspec.json.Decoder(ErrorEnvelope)
