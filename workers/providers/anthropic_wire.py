"""What only the Anthropic *upstream* needs of the Messages API wire format.

The request, content blocks, usage and errors are the shared Structs of broker/wire/messages.py
(also what clients send our `POST /v1/messages`). What stays here is how we read Anthropic's
answers (https://docs.anthropic.com/en/api/messages, streaming:
https://docs.anthropic.com/en/docs/build-with-claude/streaming): content blocks in responses and
stream events are decoded into loose Structs keyed by `type`, not the tagged unions, because new
block and event types (thinking, server tools, ...) appear without notice and must be skipped,
not fail decoding; and they declare only the fields we read.
"""

from __future__ import annotations

import msgspec

from broker.wire.messages import ErrorDetail, ErrorResponse, Usage

AnthropicUsage = Usage  # the name the ledger's tests know it by


class ContentBlock(msgspec.Struct):
    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    # Kept as raw JSON: it becomes OpenAI's `arguments` string without a decode/encode round trip.
    input: msgspec.Raw = msgspec.Raw(b"{}")


class MessageResponse(msgspec.Struct):
    id: str = ""
    model: str = ""
    content: list[ContentBlock] = []
    stop_reason: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)


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
    usage: Usage | None = None  # message_delta (cumulative counts)
    error: ErrorDetail | None = None  # error


request_encoder = msgspec.json.Encoder()
response_decoder = msgspec.json.Decoder(MessageResponse)
event_decoder = msgspec.json.Decoder(StreamEvent)
error_decoder = msgspec.json.Decoder(ErrorResponse)
