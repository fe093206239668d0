"""Whole events deflated against the log's dictionary (broker/queue/whole_events.py): byte for byte back,
at most half as long for every dialect's events, and a packing this release does not know is an error."""

from __future__ import annotations

import random

import msgspec
import pytest

from broker.queue import event_deltas, whole_events
from tests.test_event_deltas import anthropic_events, chat_events, responses_events


@pytest.mark.parametrize("events", [chat_events, responses_events, anthropic_events])
def test_the_events_a_log_keeps_whole_come_back_byte_for_byte_and_smaller(events: object) -> None:
    stream = events()  # type: ignore[operator]
    whole = [item for item in event_deltas.compact(None, stream) if isinstance(item, bytes)]
    assert whole[0] == stream[0]  # a stream's first event is always among them
    packed = [whole_events.pack(event) for event in whole]
    assert [whole_events.unpack(p) if isinstance(p, msgspec.msgpack.Ext) else p for p in packed] == whole
    first = packed[0]
    assert isinstance(first, msgspec.msgpack.Ext) and len(first.data) * 2 < len(stream[0])


def test_a_short_event_or_one_that_does_not_shrink_is_kept_as_it_is() -> None:
    assert whole_events.pack(b'{"type":"message_stop"}') == b'{"type":"message_stop"}'
    noise = random.Random(0).randbytes(300)  # nothing of the dictionary, nothing repeated
    assert whole_events.pack(noise) == noise


def test_an_event_packed_another_way_is_refused_not_misread() -> None:
    packed = whole_events.pack(chat_events()[0])
    assert isinstance(packed, msgspec.msgpack.Ext)
    with pytest.raises(ValueError, match="does not know"):
        whole_events.unpack(msgspec.msgpack.Ext(7, packed.data))
    with pytest.raises(ValueError, match="cut short"):
        whole_events.unpack(msgspec.msgpack.Ext(packed.code, packed.data[:-4]))
