"""A batch's input file, line by line from any byte offset, read from the file store in windows.

A batch step starts where the last one stopped (its recorded offset) and may step back to a line a
full queue refused (`seek`). Each window is one ranged read (S3: one GET with a Range header), so
no connection stays open between reads and at most a window plus one line is in memory; lines were
checked at upload to be at most input.MAX_LINE_BYTES.
"""

from __future__ import annotations

from broker.batches.store import FileStore

WINDOW = 1 << 20


class LineReader:
    def __init__(self, store: FileStore, file_id: str, offset: int, *, window: int = WINDOW) -> None:
        self.store, self.file_id, self.window = store, file_id, window
        self.seek(offset)

    def seek(self, offset: int) -> None:
        self._buffer = b""
        self._start = offset  # the file offset of _buffer[0]
        self._eof = False

    async def readline(self) -> bytes:
        """The next line with its newline (the last may have none); b"" at the end of the file."""
        searched = 0
        while True:
            end = self._buffer.find(b"\n", searched)
            if end >= 0:
                return self._take(end + 1)
            if self._eof:
                return self._take(len(self._buffer))
            searched = len(self._buffer)
            block = await self.store.read(self.file_id, self._start + len(self._buffer), self.window)
            self._eof = len(block) < self.window
            self._buffer += block

    def _take(self, n: int) -> bytes:
        line, self._buffer = self._buffer[:n], self._buffer[n:]
        self._start += n
        return line
