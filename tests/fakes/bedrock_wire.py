"""What the fake Bedrock reads and writes: the Converse request as strict Structs, the conversation rules
Bedrock enforces, and AWS event-stream frames.

Written from the API reference (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html
and the types it links), not from the adapter's Structs, so a request the fake accepts proves the
translation. Unknown fields and out-of-range values are refused as Bedrock refuses them (400
ValidationException); the rules below carry Bedrock's own words where they are known.

Frames (https://docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html#streaming-event-stream,
the same encoding every AWS event stream uses): a 12-byte prelude (total length, headers length, CRC32 of
those 8 bytes), headers (name length, name, value type 7 = string, value length, value), the payload, and
a CRC32 of everything before it. botocore parses them but has no encoder, so `frame` is ours; the tests
prove it through botocore's parser (tests/providers/test_bedrock.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class _Strict(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True, omit_defaults=True):
    pass


class ImageSource(_Strict):
    data: str | None = msgspec.field(default=None, name="bytes")
    s3_location: dict[str, Any] | None = None


class Image(_Strict):
    format: Literal["png", "jpeg", "gif", "webp"]
    source: ImageSource


class ToolUse(_Strict):
    tool_use_id: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]+$", min_length=1, max_length=64)]
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]+$", min_length=1, max_length=64)]
    input: Any


class ToolResultContent(_Strict):
    text: str | None = None
    json: Any = None
    image: Image | None = None


class ToolResult(_Strict):
    tool_use_id: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]+$", min_length=1, max_length=64)]
    content: list[ToolResultContent]
    status: Literal["success", "error"] | None = None


class ReasoningText(_Strict):
    text: str
    signature: str | None = None


class ReasoningContent(_Strict):
    reasoning_text: ReasoningText | None = None
    redacted_content: str | None = None


class CachePoint(_Strict):
    type: Literal["default"]


class ContentBlock(_Strict):
    text: str | None = None
    image: Image | None = None
    tool_use: ToolUse | None = None
    tool_result: ToolResult | None = None
    reasoning_content: ReasoningContent | None = None
    cache_point: CachePoint | None = None


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: list[ContentBlock]


class SystemBlock(_Strict):
    text: str | None = None
    cache_point: CachePoint | None = None


class InferenceConfig(_Strict):
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    stop_sequences: Annotated[list[str], Meta(max_length=2500)] | None = None


class InputSchema(_Strict):
    json: dict[str, Any]


class ToolSpec(_Strict):
    name: Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]+$", min_length=1, max_length=64)]
    input_schema: InputSchema
    description: Annotated[str, Meta(min_length=1)] | None = None


class Tool(_Strict):
    tool_spec: ToolSpec | None = None
    cache_point: CachePoint | None = None


class SpecificTool(_Strict):
    name: str


class ToolChoice(_Strict):
    auto: dict[str, Any] | None = None
    any: dict[str, Any] | None = None
    tool: SpecificTool | None = None


class ToolConfig(_Strict):
    tools: Annotated[list[Tool], Meta(min_length=1)]
    tool_choice: ToolChoice | None = None


class ConverseRequest(_Strict):
    messages: list[Message] = []
    system: list[SystemBlock] = []
    inference_config: InferenceConfig = msgspec.field(default_factory=InferenceConfig)
    tool_config: ToolConfig | None = None
    additional_model_request_fields: dict[str, Any] | None = None
    additional_model_response_field_paths: list[str] | None = None
    guardrail_config: dict[str, Any] | None = None
    performance_config: dict[str, Any] | None = None
    prompt_variables: dict[str, Any] | None = None
    request_metadata: dict[str, str] | None = None


# ---------------------------------------------------------------- rules

_MAGIC = {"png": (b"\x89PNG",), "jpeg": (b"\xff\xd8\xff",), "gif": (b"GIF87a", b"GIF89a"), "webp": (b"RIFF",)}


def _members(value: msgspec.Struct) -> int:
    return sum(getattr(value, f) is not None for f in value.__struct_fields__)


def validate(req: ConverseRequest) -> str | None:
    """Bedrock's ValidationException message for a request it refuses, or None."""
    if not req.messages or req.messages[0].role != "user":
        return "A conversation must start with a user message. Try again with a conversation that starts with a user message."
    uses_tools = False
    for i, m in enumerate(req.messages):
        if i and m.role == req.messages[i - 1].role:
            return ("A conversation must alternate between user and assistant roles. Make sure the conversation "
                    "alternates between user and assistant roles and try again.")
        if not m.content:
            return f"The content field in the Message object at messages.{i} is empty. Add a ContentBlock object " \
                   "to the content field and try again."
        for j, block in enumerate(m.content):
            if _members(block) != 1:
                return f"messages.{i}.content.{j}: exactly one member of ContentBlock must be set."
            if block.text is not None and not block.text.strip():
                return f"The text field in the ContentBlock object at messages.{i}.content.{j} is blank. " \
                       "Add text to the text field, and try again."
            if (block.tool_use is not None and m.role != "assistant") or (block.tool_result is not None and m.role != "user"):
                return f"messages.{i}.content.{j}: toolUse blocks belong to assistant turns, toolResult blocks to user turns."
            if block.image is not None and (problem := _image_problem(block.image, f"messages.{i}.content.{j}")):
                return problem
            uses_tools = uses_tools or block.tool_use is not None or block.tool_result is not None
        if problem := _results_problem(req.messages, i):
            return problem
    if uses_tools and req.tool_config is None:
        return "The toolConfig field must be defined when using toolUse and toolResult content blocks."
    if req.tool_config is not None:
        choice = req.tool_config.tool_choice
        if choice is not None and _members(choice) != 1:
            return "toolConfig.toolChoice: exactly one of auto, any and tool must be set."
        names = [t.tool_spec.name for t in req.tool_config.tools if t.tool_spec is not None]
        if choice is not None and choice.tool is not None and choice.tool.name not in names:
            return f"The tool {choice.tool.name} in toolConfig.toolChoice is not defined in toolConfig.tools."
    return None


def _image_problem(image: Image, where: str) -> str | None:
    if image.source.data is None:
        return None
    try:
        data = base64.b64decode(image.source.data, validate=True)
    except binascii.Error:
        return f"{where}.image.source.bytes: Invalid base64 data."
    if not data.startswith(_MAGIC[image.format]):
        return f"Unable to process the image at {where}: its bytes are not a {image.format} image."
    return None


def _results_problem(messages: list[Message], i: int) -> str | None:
    """A user turn after an assistant turn that called tools must answer every call, and only those."""
    if i == 0 or messages[i].role != "user":
        return None
    called = [b.tool_use.tool_use_id for b in messages[i - 1].content if b.tool_use is not None]
    answered = [b.tool_result.tool_use_id for b in messages[i].content if b.tool_result is not None]
    if len(answered) > len(called):
        return f"The number of toolResult blocks at messages.{i}.content exceeds the number of toolUse blocks " \
               "of previous turn."
    missing = [c for c in called if c not in answered]
    if missing:
        return f"Expected toolResult blocks at messages.{i}.content for the following Ids: {', '.join(missing)}"
    return None


# ---------------------------------------------------------------- event-stream frames

_STRING = 7  # header value type: a UTF-8 string with a 2-byte length


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    encoded = b"".join(
        struct.pack(">B", len(n := name.encode())) + n + struct.pack(">BH", _STRING, len(v := value.encode())) + v
        for name, value in headers.items())
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(event_type: str, body: dict[str, Any]) -> bytes:
    # Bedrock pads each event's JSON with a `p` field of varying length (so sizes leak nothing).
    padded = {**body, "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"[:len(event_type) + 6]}
    return frame({":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
                 json.dumps(padded, separators=(",", ":")).encode())


def exception(exception_type: str, message: str) -> bytes:
    return frame({":exception-type": exception_type, ":content-type": "application/json",
                  ":message-type": "exception"}, json.dumps({"message": message}).encode())
