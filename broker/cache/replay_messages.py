"""Cache entries ⇄ Anthropic Messages answers (/v1/messages): a stream assembled into the Message the
cache keeps, and a kept Message given back as a hit, as JSON or replayed as its event stream.

Events as https://docs.anthropic.com/en/docs/build-with-claude/streaming describes them: a Message is
`message_start`'s message, the blocks their `content_block_*` events build (text and thinking deltas
concatenated, a tool's `input_json_delta`s parsed whole at its stop, a signature as sent) and
`message_delta`'s stop reason and cumulative usage. Only a stream that reached `message_stop` is kept.
"""

from __future__ import annotations

import json

import msgspec

from broker.wire.messages import Message, ThinkingBlock, ToolUseBlock, encoder
from broker.wire.messages_events import (
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    InputJSONDelta,
    MessageDelta,
    MessageStart,
    MessageStop,
    SignatureDelta,
    StopInfo,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    encode_event,
)

_event = msgspec.json.Decoder(StreamEvent)
_message = msgspec.json.Decoder(Message)


def _data(block: bytes) -> bytes:
    """The JSON of one SSE event block (`event:` + `data:` lines, as workers/messages.py emits them)."""
    return block[block.index(b"data: ") + 6:].split(b"\n", 1)[0]


def assemble(events: list[bytes]) -> bytes | None:
    """The Message a whole stream carried; None if it is not whole or holds what we do not model."""
    message: Message | None = None
    blocks: dict[int, msgspec.Struct] = {}
    arguments: dict[int, list[str]] = {}
    stop, stopped = StopInfo(), False
    try:
        for block in events:
            match _event.decode(_data(block)):
                case MessageStart(message=started):
                    message = started
                case ContentBlockStart(index=index, content_block=opened):
                    blocks[index] = opened
                case ContentBlockDelta(index=index, delta=TextDelta(text=text)):
                    blocks[index] = msgspec.structs.replace(blocks[index], text=blocks[index].text + text)  # type: ignore[attr-defined]
                case ContentBlockDelta(index=index, delta=InputJSONDelta(partial_json=part)):
                    arguments.setdefault(index, []).append(part)
                case ContentBlockDelta(index=index, delta=ThinkingDelta(thinking=text)):
                    blocks[index] = msgspec.structs.replace(blocks[index], thinking=blocks[index].thinking + text)  # type: ignore[attr-defined]
                case ContentBlockDelta(index=index, delta=SignatureDelta(signature=signature)):
                    blocks[index] = msgspec.structs.replace(blocks[index], signature=signature)
                case MessageDelta(delta=delta, usage=usage) if message is not None:
                    stop, message = delta, msgspec.structs.replace(message, usage=message.usage.merged(usage))
                case MessageStop():
                    stopped = True
    except (msgspec.DecodeError, KeyError, ValueError):
        return None
    if message is None or not stopped:
        return None
    for index, parts in arguments.items():
        blocks[index] = msgspec.structs.replace(blocks[index], input=json.loads("".join(parts) or "{}"))
    content = [blocks[index] for index in sorted(blocks)]
    return encoder.encode(msgspec.structs.replace(message, content=content, stop_reason=stop.stop_reason,
                                                  stop_sequence=stop.stop_sequence))


def hit_body(body: bytes, answer_id: str) -> bytes:
    """A kept Message as this request's own answer."""
    return encoder.encode(msgspec.structs.replace(_message.decode(body), id=answer_id))


def replay(body: bytes, answer_id: str) -> list[bytes]:
    """A kept Message as the event stream that would have carried it, each event a whole SSE block."""
    message = msgspec.structs.replace(_message.decode(body), id=answer_id)
    opening = msgspec.structs.replace(message, content=[], stop_reason=None, stop_sequence=None,
                                      usage=msgspec.structs.replace(message.usage, output_tokens=0))
    events = [encode_event(MessageStart(opening))]
    for index, block in enumerate(message.content):
        deltas: list[TextDelta | InputJSONDelta | ThinkingDelta | SignatureDelta] = []
        if isinstance(block, ToolUseBlock):
            deltas, block = [InputJSONDelta(json.dumps(block.input))], msgspec.structs.replace(block, input={})
        elif isinstance(block, ThinkingBlock):
            deltas = [ThinkingDelta(block.thinking), SignatureDelta(block.signature)]
            block = msgspec.structs.replace(block, thinking="", signature="")
        elif hasattr(block, "text"):
            deltas, block = [TextDelta(block.text)], msgspec.structs.replace(block, text="")
        events.append(encode_event(ContentBlockStart(index, block)))
        events += [encode_event(ContentBlockDelta(index, delta)) for delta in deltas]
        events.append(encode_event(ContentBlockStop(index)))
    events.append(encode_event(MessageDelta(StopInfo(message.stop_reason, message.stop_sequence), message.usage)))
    events.append(encode_event(MessageStop()))
    return events
