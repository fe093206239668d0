"""Anthropic Messages stream events, and their SSE framing.

Events as https://docs.anthropic.com/en/docs/build-with-claude/streaming lists them, with the
fields the `anthropic` SDK's `src/anthropic/types/raw_message_stream_event.py` types. Each goes
out as `event: <type>` + `data: <json>`: the SDK (`src/anthropic/_streaming.py`) dispatches on
the `event:` line and skips events without one, so the name must equal the JSON's `type`.
"""

from __future__ import annotations

import msgspec

from broker.wire.messages import (
    ErrorDetail,
    ErrorResponse,
    Message,
    ResponseBlock,
    Usage,
    encoder,
)


class Tagged(msgspec.Struct, tag_field="type"):
    """A stream event or delta: the JSON's `type` names it."""


class TextDelta(Tagged, tag="text_delta"):
    text: str


class InputJSONDelta(Tagged, tag="input_json_delta"):
    partial_json: str


class ThinkingDelta(Tagged, tag="thinking_delta"):
    thinking: str


class SignatureDelta(Tagged, tag="signature_delta"):
    signature: str


class MessageStart(Tagged, tag="message_start"):
    message: Message


class ContentBlockStart(Tagged, tag="content_block_start"):
    index: int
    content_block: ResponseBlock


class ContentBlockDelta(Tagged, tag="content_block_delta"):
    index: int
    delta: TextDelta | InputJSONDelta | ThinkingDelta | SignatureDelta


class ContentBlockStop(Tagged, tag="content_block_stop"):
    index: int


class StopInfo(msgspec.Struct):
    stop_reason: str | None = None
    stop_sequence: str | None = None


class MessageDelta(Tagged, tag="message_delta"):
    delta: StopInfo
    usage: Usage  # cumulative counts; output_tokens is required


class MessageStop(Tagged, tag="message_stop"): ...


class Ping(Tagged, tag="ping"): ...


StreamEvent = (MessageStart | ContentBlockStart | ContentBlockDelta | ContentBlockStop | MessageDelta
               | MessageStop | Ping | ErrorResponse)


def encode_event(event: StreamEvent) -> bytes:
    """One complete SSE event, named for its type."""
    name = type(event).__struct_config__.tag
    assert isinstance(name, str)
    return b"event: %s\ndata: %s\n\n" % (name.encode(), encoder.encode(event))


def error_event(error_type: str, message: str) -> bytes:
    """The `error` event that ends a stream after its 200; the SDK raises it as an APIStatusError."""
    return encode_event(ErrorResponse(ErrorDetail(error_type, message)))
