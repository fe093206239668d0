"""Upstream SSE parsing holds up however TCP slices the bytes."""

from __future__ import annotations

import pytest

from workers.providers.sse import SSEParser

STREAM = (
    b": keep-alive\r\n\r\n"
    b'data: {"a": "caf\xc3\xa9"}\r\n\r\n'
    b"event: message\ndata: line one\ndata: line two\n\n"
    b"data:no-space\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [(None, b'{"a": "caf\xc3\xa9"}'), ("message", b"line one\nline two"), (None, b"no-space"),
            (None, b"[DONE]")]


def parse(pieces: list[bytes]) -> list[tuple[str | None, bytes]]:
    parser = SSEParser()
    return [(e.event, e.data) for piece in pieces for e in parser.feed(piece)]


def test_whole_stream() -> None:
    assert parse([STREAM]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_any_slicing_gives_the_same_events(size: int) -> None:
    assert parse([STREAM[i:i + size] for i in range(0, len(STREAM), size)]) == EXPECTED


def test_an_event_without_its_blank_line_is_not_emitted() -> None:
    assert parse([b"data: partial\n"]) == []
