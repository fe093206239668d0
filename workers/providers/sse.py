"""Incremental Server-Sent Events parsing for upstream streams.

Bytes arrive in arbitrary slices (a TCP read can end mid-line or mid-UTF-8
character), so the parser keeps a buffer and yields an event's data only when
its terminating blank line has arrived. Per the SSE spec: lines end with LF,
CR or CRLF; `:` lines are comments (keep-alives); several `data:` lines join
with "\\n"; one space after the colon is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator


class SSEEvent:
    __slots__ = ("event", "data")

    def __init__(self, event: str | None, data: bytes) -> None:
        self.event = event
        self.data = data


class SSEParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event: str | None = None

    def feed(self, raw: bytes) -> Iterator[SSEEvent]:
        buffer = self._buffer + raw
        if b"\r" in buffer:
            # A lone CR at the very end may be the first half of CRLF: wait for more.
            keep_cr = buffer.endswith(b"\r")
            buffer = buffer[:-1] if keep_cr else buffer
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if keep_cr else b"")
        *lines, self._buffer = buffer.split(b"\n")
        for line in lines:
            event = self._line(line)
            if event is not None:
                yield event

    def _line(self, line: bytes) -> SSEEvent | None:
        if not line:
            if not self._data and self._event is None:
                return None
            event = SSEEvent(self._event, b"\n".join(self._data))
            self._data, self._event = [], None
            return event
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        return None
