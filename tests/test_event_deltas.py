"""Events kept as edits of the one before (broker/queue/event_deltas.py): every dialect's stream comes
back byte for byte, and the frequent events cost a few bytes each."""

from __future__ import annotations

import json

import msgspec
import pytest

from broker.inbound.messages_stream import MessagesStream
from broker.inbound.responses_stream import ResponsesStream
from broker.queue.event_deltas import apply, compact, delta, expand
from broker.wire import json_encoder
from broker.wire.chat import ChatChunk, ChunkChoice, Delta, DeltaFunction, DeltaToolCall, Usage
from broker.wire.responses import responses_request_decoder

WORDS = ["Hel", "lo", ",", " wor", "ld", " \\\"quoted\\\"", " é", "\n", " ", " twelve", "!"] * 3


def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None, index: int = 0) -> ChatChunk:
    choices = [] if usage is not None else [ChunkChoice(index, delta, finish)]
    return ChatChunk(id="chatcmpl-0123456789abcdef0123456789abcdef", created=1760000000, model="gpt-4o-mini",
                     choices=choices, **({"usage": usage} if usage is not None else {}))


def chat_chunks() -> list[ChatChunk]:
    calls = [DeltaToolCall(0, id="call_a", type="function", function=DeltaFunction(name="get_weather", arguments="")),
             *[DeltaToolCall(0, function=DeltaFunction(arguments=part)) for part in ['{"ci', 'ty":', ' "Paris"}']],
             DeltaToolCall(1, id="call_b", type="function", function=DeltaFunction(name="get_time", arguments="{}"))]
    return [chunk(Delta(role="assistant", content="", refusal=None)),
            *[chunk(Delta(content=w)) for w in WORDS],
            *[chunk(Delta(tool_calls=[call])) for call in calls],
            chunk(Delta(), "tool_calls"),
            chunk(Delta(), usage=Usage(prompt_tokens=12, completion_tokens=345, total_tokens=357))]


def chat_events() -> list[bytes]:
    return [json_encoder.encode(c) for c in chat_chunks()]


def responses_events() -> list[bytes]:
    request = responses_request_decoder.decode(json.dumps({"model": "m", "input": "hi", "stream": True}))
    stream = ResponsesStream(request, "resp_0123456789abcdef", 1760000000)
    out = stream.start()
    for c in chat_chunks()[:-1]:
        out += stream.on_chunk(c)
    return out + stream.finish(Usage(prompt_tokens=12, completion_tokens=345, total_tokens=357),
                               completed_at=1760000009)


def anthropic_events() -> list[bytes]:
    stream = MessagesStream("claude-sonnet-4", "0123456789abcdef0123456789abcdef", input_tokens=12)
    out: list[bytes] = []
    for c in chat_chunks()[:-1]:
        out += stream.on_chunk(c)
    return out + stream.finish(Usage(prompt_tokens=12, completion_tokens=345, total_tokens=357))


@pytest.mark.parametrize("events", [chat_events, responses_events, anthropic_events], ids=["chat", "responses",
                                                                                          "anthropic"])
def test_every_dialects_stream_comes_back_byte_for_byte(events: object) -> None:
    stream = events()  # type: ignore[operator]
    assert len(stream) > 30
    items = compact(None, stream)
    assert isinstance(items[0], bytes)  # a stream starts from a whole event
    assert expand(None, items) == stream
    # ...also cut into bursts, each compacted against the last event of the one before
    previous, rebuilt = None, []
    for start in range(0, len(stream), 4):
        burst = msgspec.msgpack.decode(msgspec.msgpack.encode(compact(previous, stream[start:start + 4])))
        rebuilt += expand(rebuilt[-1] if rebuilt else None, burst)
        previous = stream[start:start + 4][-1]
    assert rebuilt == stream


# A Responses delta's text and its sequence number are one hole: the 33 bytes between them are not
# worth the search for a second (broker/queue/event_deltas.py `TWO_HOLES_FROM`).
@pytest.mark.parametrize("events, most", [(chat_events, 24), (responses_events, 48), (anthropic_events, 24)],
                         ids=["chat", "responses", "anthropic"])
def test_a_text_delta_costs_its_text_and_a_few_bytes(events: object, most: int) -> None:
    stream = events()  # type: ignore[operator]
    text = [e for e in stream if b"wor" in e and b"delta" in e and len(e) < 400]
    assert text, "no text delta event"
    previous = stream[stream.index(text[0]) - 1]
    (item,) = compact(previous, [text[0]])
    assert isinstance(item, list)
    kept = len(msgspec.msgpack.encode(item))
    assert kept <= len(" wor") + most and kept < len(text[0]) / 3


def test_the_two_holes_of_a_numbered_event_as_its_number_grows_a_digit() -> None:
    template = b'{"type":"response.output_text.delta","sequence_number":%d,"item_id":"msg_0123456789abcdef","delta":"%s"}'
    for before, after in [(8, 9), (9, 10), (19, 20), (99, 100), (1234, 1235)]:
        ref, event = template % (before, b"one"), template % (after, b"a longer two")
        edit = delta(ref, event)
        assert len(edit) == 6, edit  # the number and the delta, the item id between them copied
        assert apply(ref, edit) == event


@pytest.mark.parametrize("previous, event", [
    (b"", b"data: {}"),
    (b"data: {}", b""),
    (b"x" * 50, b"y" * 50),  # nothing in common
    (b'{"a":1}', b'{"a":1}'),  # the same again
    (b'{"type":"ping"}', b'event: error\ndata: {"error":{"message":"upstream failed","type":"server_error"}}\n\n'),
    (b"\x00\xff" * 40, b"\x00\xfe" * 40),  # not even text
])
def test_unmatched_events_are_kept_whole_or_rebuilt_exactly(previous: bytes, event: bytes) -> None:
    (item,) = compact(previous, [event])
    assert expand(previous, [item]) == [event]
    if isinstance(item, list):
        assert len(msgspec.msgpack.encode(item)) < len(event)


def test_an_edit_without_its_reference_is_refused() -> None:
    with pytest.raises(ValueError):
        expand(None, [[0, 0, b"x"]])
    with pytest.raises(ValueError):
        apply(b"short", [10, 5, b"x"])
