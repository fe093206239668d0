"""The file store in an S3-compatible bucket (`batches.s3`), for API and batch workers on many machines.

    <prefix>file-<hex>                             a committed file (an upload, a batch's output)
    <prefix>uncommitted/file-<hex>/<offset:020d>   a running batch's output, one object per commit

An upload streams: past `part_bytes` it becomes a multipart upload, one part in memory at a time,
completed when the last block is in (aborted if the upload fails), so a reader never sees half a file.

A batch's output cannot be a multipart upload while it runs: it grows by a few lines every commit,
and S3 refuses parts under 5 MiB but the last. So each commit's lines are an object of their own,
named by the offset they start at; a piece left by a step that died before recording its size has
exactly the offset the next step writes at, and is overwritten. `commit` copies the pieces below the
recorded size, in order, into the final object (the same streaming upload) and deletes them.

Expiry: S3 lifecycle rules apply to prefixes or tags, not to one object's own date, and a file's
expiry is per upload (`expires_after`). So, as with the directory, the batch worker's sweep deletes
the bodies whose metadata expired in Redis (files.sweep), and pieces of outputs older than a week.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from datetime import datetime

from broker.batches.s3_client import S3Client, store_error
from broker.batches.store import Entry, valid_id
from broker.config.batches import S3Store

UNCOMMITTED = "uncommitted/"
READ_BLOCK = 1 << 20


class S3FileStore:
    def __init__(self, settings: S3Store) -> None:
        self.client = S3Client(settings)
        self.prefix = settings.prefix
        self.part_bytes = settings.part_bytes

    def key(self, file_id: str) -> str:
        if not valid_id(file_id):
            raise FileNotFoundError(file_id)
        return self.prefix + file_id

    def _pieces(self, file_id: str) -> str:
        return f"{self.prefix}{UNCOMMITTED}{self.key(file_id)[len(self.prefix):]}/"

    async def put(self, file_id: str, blocks: AsyncIterable[bytes]) -> int:
        key, client = self.key(file_id), self.client
        buffer, etags, size = bytearray(), list[str](), 0
        upload_id: str | None = None
        try:
            async for block in blocks:
                buffer += block
                size += len(block)
                while len(buffer) >= self.part_bytes:
                    if upload_id is None:
                        upload_id = await client.create_multipart(key)
                    etags.append(await client.upload_part(key, upload_id, len(etags) + 1,
                                                          bytes(buffer[:self.part_bytes])))
                    del buffer[:self.part_bytes]
            if upload_id is None:
                await client.put_object(key, bytes(buffer))
            else:
                if buffer:
                    etags.append(await client.upload_part(key, upload_id, len(etags) + 1, bytes(buffer)))
                await client.complete_multipart(key, upload_id, etags)
        except BaseException:
            if upload_id is not None:
                await client.abort_multipart(key, upload_id)
            raise
        return size

    async def read(self, file_id: str, start: int, size: int) -> bytes:
        return await self.client.get_range(self.key(file_id), start, size)

    async def stream(self, file_id: str) -> AsyncIterator[bytes]:
        async with self.client.get(self.key(file_id)) as response:
            async for block in response.content.iter_chunked(READ_BLOCK):
                yield block

    async def append(self, file_id: str, at: int, data: bytes) -> None:
        await self.client.put_object(f"{self._pieces(file_id)}{at:020d}", data)

    async def commit(self, file_id: str, size: int) -> None:
        pieces = sorted([(int(o.key.rsplit("/", 1)[1]), o.key, o.size)
                         async for o in self.client.listing(self._pieces(file_id))])
        if not pieces:
            if await self.client.head(self.key(file_id)):
                return  # committed by a step that died before recording it
            raise FileNotFoundError(file_id)
        kept = [p for p in pieces if p[0] < size]
        covered = 0
        for offset, _, length in kept:  # pieces must tile [0, size): a gap is lost output, never silently
            if offset != covered:
                raise store_error(f"{file_id}: output piece at {offset}, expected {covered}")
            covered += length
        if covered < size:
            raise store_error(f"{file_id}: output pieces hold {covered} of {size} bytes")

        async def blocks() -> AsyncIterator[bytes]:
            for offset, key, length in kept:
                yield await self.client.get_range(key, 0, min(length, size - offset))

        await self.put(file_id, blocks())
        await self.client.delete_many([key for _, key, _ in pieces])

    async def delete(self, file_id: str) -> None:
        await self.client.delete(self.key(file_id))
        await self.client.delete_many([o.key async for o in self.client.listing(self._pieces(file_id))])

    async def entries(self) -> AsyncIterator[Entry]:
        now = time.time()
        async for o in self.client.listing(self.prefix + "file-"):
            file_id = o.key[len(self.prefix):]
            if valid_id(file_id):
                yield Entry(file_id, True, now - _epoch(o.last_modified))
        newest: dict[str, float] = {}
        async for o in self.client.listing(self.prefix + UNCOMMITTED):
            file_id = o.key[len(self.prefix + UNCOMMITTED):].split("/", 1)[0]
            if valid_id(file_id):
                newest[file_id] = max(newest.get(file_id, 0.0), _epoch(o.last_modified))
        for file_id, written in newest.items():
            yield Entry(file_id, False, now - written)

    async def remove(self, entry: Entry) -> None:
        if entry.committed:
            await self.client.delete(self.key(entry.file_id))
        else:
            await self.client.delete_many([o.key async for o in self.client.listing(self._pieces(entry.file_id))])

    async def aclose(self) -> None:
        await self.client.aclose()


def _epoch(last_modified: str) -> float:
    """ListObjectsV2's `LastModified` (ISO 8601, `...Z`) in seconds; now if a server sent none."""
    try:
        return datetime.fromisoformat(last_modified.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()
