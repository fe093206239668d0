"""The file store as a directory every API and batch-worker process shares (`batches.files_dir`).

    <dir>/file-<hex>           a committed file
    <dir>/.file-<hex>.part     an upload in progress, or a running batch's output

Writes go to the `.part` name first and are renamed when whole (rename is atomic on one file
system), so a reader never sees half a file and a crash leaves no torn one under a real id. Disk
calls run in a thread: a shared volume (NFS, EFS) can take long enough to stall the event loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import IO

from broker.batches.store import Entry, valid_id

BLOCK = 1 << 20


class DirectoryStore:
    def __init__(self, directory: str) -> None:
        self.root = Path(directory)  # made on the first write: a deployment without batches never has one

    def path(self, file_id: str) -> Path:
        if not valid_id(file_id):
            raise FileNotFoundError(file_id)
        return self.root / file_id

    def _part(self, file_id: str) -> Path:
        return self.path(file_id).with_name(f".{file_id}.part")

    async def put(self, file_id: str, blocks: AsyncIterable[bytes]) -> int:
        part = self._part(file_id)
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        out = await asyncio.to_thread(open, part, "wb")
        size = 0
        try:
            with out:
                async for block in blocks:
                    size += len(block)
                    await asyncio.to_thread(out.write, block)
            await asyncio.to_thread(os.replace, part, self.path(file_id))
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return size

    async def read(self, file_id: str, start: int, size: int) -> bytes:
        def read() -> bytes:
            with open(self.path(file_id), "rb") as f:
                f.seek(start)
                return f.read(size)

        return await asyncio.to_thread(read)

    async def stream(self, file_id: str) -> AsyncIterator[bytes]:
        f: IO[bytes] = await asyncio.to_thread(open, self.path(file_id), "rb")
        try:
            while block := await asyncio.to_thread(f.read, BLOCK):
                yield block
        finally:
            f.close()

    async def append(self, file_id: str, at: int, data: bytes) -> None:
        def append() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self._part(file_id), "ab") as f:
                if f.tell() < at:
                    raise RuntimeError(f"{file_id}: {f.tell()} bytes written, {at} recorded")
                f.truncate(at)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        await asyncio.to_thread(append)

    async def commit(self, file_id: str, size: int) -> None:
        def commit() -> None:
            part = self._part(file_id)
            if not part.exists() and self.path(file_id).exists():
                return  # committed by a step that died before recording it
            with open(part, "ab") as f:
                f.truncate(size)
            os.replace(part, self.path(file_id))

        await asyncio.to_thread(commit)

    async def delete(self, file_id: str) -> None:
        for path in (self._part(file_id), self.path(file_id)):
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def entries(self) -> AsyncIterator[Entry]:
        def scan() -> list[Entry]:
            if not self.root.is_dir():
                return []
            now, found = time.time(), []
            for p in self.root.iterdir():
                name, committed = p.name, True
                if name.startswith(".file-") and name.endswith(".part"):
                    name, committed = name[1:-5], False
                if not valid_id(name):
                    continue
                try:
                    found.append(Entry(name, committed, now - p.stat().st_mtime))
                except FileNotFoundError:  # deleted meanwhile
                    continue
            return found

        for entry in await asyncio.to_thread(scan):
            yield entry

    async def remove(self, entry: Entry) -> None:
        path = self.path(entry.file_id) if entry.committed else self._part(entry.file_id)
        await asyncio.to_thread(path.unlink, missing_ok=True)

    async def aclose(self) -> None:
        return None
