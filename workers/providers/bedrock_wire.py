"""AWS Bedrock Converse API payloads as msgspec Structs.

Shapes from the API reference (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html,
API_runtime_ConverseStream.html and the types they link): JSON in lowerCamelCase, unions written as
objects with exactly one member set, blobs as base64 strings. Requests leave UNSET fields out; responses
and stream events declare only the fields the translation reads (each stream event also carries a
padding field `p`, and Bedrock adds fields over time: both are skipped).
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

# ---------------------------------------------------------------- request


class _Out(msgspec.Struct, omit_defaults=True, rename="camel", kw_only=True):
    """Request side: UNSET fields are left out, so we never send a value the client did not ask for."""


class ImageSource(_Out):
    data: str = msgspec.field(name="bytes")  # base64


class Image(_Out):
    format: str  # png | jpeg | gif | webp
    source: ImageSource


class ToolUse(_Out):
    tool_use_id: str
    name: str
    input: Any


class ToolResultContent(_Out):
    text: str


class ToolResult(_Out):
    tool_use_id: str
    content: list[ToolResultContent]


class ContentBlock(_Out):
    """A union: exactly one member is set."""

    text: str | UnsetType = UNSET
    image: Image | UnsetType = UNSET
    tool_use: ToolUse | UnsetType = UNSET
    tool_result: ToolResult | UnsetType = UNSET


class Message(_Out):
    role: str  # user | assistant
    content: list[ContentBlock]


class SystemBlock(_Out):
    text: str


class InferenceConfig(_Out):
    max_tokens: int | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET


class InputSchema(_Out):
    json: dict[str, Any]


class ToolSpec(_Out):
    name: str
    input_schema: InputSchema
    description: str | UnsetType = UNSET


class Tool(_Out):
    tool_spec: ToolSpec


class SpecificTool(_Out):
    name: str


class ToolChoice(_Out):
    """A union: `auto` (the default), `any` (some tool), or `tool` (that one)."""

    auto: dict[str, Any] | UnsetType = UNSET
    any: dict[str, Any] | UnsetType = UNSET
    tool: SpecificTool | UnsetType = UNSET


class ToolConfig(_Out):
    tools: list[Tool]
    tool_choice: ToolChoice | UnsetType = UNSET


class ConverseRequest(_Out):
    messages: list[Message]
    system: list[SystemBlock] | UnsetType = UNSET
    inference_config: InferenceConfig | UnsetType = UNSET
    tool_config: ToolConfig | UnsetType = UNSET
    # Model-specific fields passed to the model as they are (Claude's `thinking`).
    additional_model_request_fields: dict[str, Any] | UnsetType = UNSET


# ---------------------------------------------------------------- response


class _In(msgspec.Struct, rename="camel", kw_only=True):
    pass


class RespToolUse(_In):
    tool_use_id: str
    name: str
    input: msgspec.Raw = msgspec.Raw(b"{}")  # a JSON document: passed on as the call's arguments


class RespBlock(_In):
    text: str | None = None
    tool_use: RespToolUse | None = None
    # reasoningContent, citations, images... have no Chat equivalent: not decoded.


class RespMessage(_In):
    content: list[RespBlock] = []


class Output(_In):
    message: RespMessage | None = None


class TokenUsage(_In):
    input_tokens: int = 0  # without the cache reads and writes, as Anthropic counts
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0


class ConverseResponse(_In):
    output: Output = msgspec.field(default_factory=Output)
    stop_reason: str = "end_turn"
    usage: TokenUsage | None = None


class ErrorBody(msgspec.Struct):
    """`{"message": ...}`; a few AWS front ends spell it `Message`."""

    message: str | None = None
    Message: str | None = None

    def text(self) -> str:
        return self.message or self.Message or ""


# ---------------------------------------------------------------- stream events (converse-stream)


class StartToolUse(_In):
    tool_use_id: str
    name: str


class BlockStart(_In):
    tool_use: StartToolUse | None = None


class ContentBlockStart(_In):
    content_block_index: int = 0
    start: BlockStart = msgspec.field(default_factory=BlockStart)


class DeltaToolUse(_In):
    input: str = ""  # a fragment of the JSON input


class BlockDelta(_In):
    text: str | None = None
    tool_use: DeltaToolUse | None = None
    # reasoningContent (text / signature / redactedContent) has no Chat delta: not decoded.


class ContentBlockDelta(_In):
    content_block_index: int = 0
    delta: BlockDelta = msgspec.field(default_factory=BlockDelta)


class MessageStop(_In):
    stop_reason: str = "end_turn"


class StreamMetadata(_In):
    usage: TokenUsage | None = None


# Built once: msgspec's encoders and decoders are cheapest reused (docs/perf-tips.rst).
encoder = msgspec.json.Encoder()
response_decoder = msgspec.json.Decoder(ConverseResponse)
error_decoder = msgspec.json.Decoder(ErrorBody)
block_start_decoder = msgspec.json.Decoder(ContentBlockStart)
block_delta_decoder = msgspec.json.Decoder(ContentBlockDelta)
message_stop_decoder = msgspec.json.Decoder(MessageStop)
metadata_decoder = msgspec.json.Decoder(StreamMetadata)
