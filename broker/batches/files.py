"""Files for the Batch API: bodies in a file store, metadata in Redis.

File bodies never enter Redis memory: a 200 MB batch input would not fit a cache. They live in
a `FileStore`; the one shipped is a local directory (`batches.files_dir`) that every API and
batch-worker process of a deployment shares (a volume). An S3-style object store maps onto the
same four calls: `create` is a multipart upload finished by a rename (S3: complete the upload),
`open`/`read` a ranged GET, `append` a part of the output's multipart upload, `delete` a DELETE.

    {ns}:file:<id>        msgpack `StoredFile`; expires with the file (`batches.file_ttl_days`)
    {ns}:files:<tenant>   ZSET of the tenant's file ids by creation; members past the longest
                          possible lifetime are trimmed on every upload

A file whose metadata expired is deleted from the store by the batch worker's sweep.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

import msgspec
from redis.asyncio import Redis

from broker.keys import Keys
from broker.store.connection import get_many

Purpose = Literal["batch", "batch_output"]
MAX_TTL_S = 3650 * 86_400


class FileObject(msgspec.Struct, kw_only=True):
    """OpenAI's file object (https://platform.openai.com/docs/api-reference/files/object)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Purpose
    status: Literal["processed"] = "processed"
    expires_at: int


class StoredFile(msgspec.Struct, array_like=True):
    file: FileObject
    tenant: str
    lines: int = 0
    endpoint: str = ""  # a batch input's one endpoint (every line's `url`)


_stored_encoder = msgspec.msgpack.Encoder()
_stored_decoder = msgspec.msgpack.Decoder(StoredFile)


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


class FileStore:
    """A directory of file bodies, one per id. Writes go to a temporary name first, so a reader
    never sees half a file and a crash leaves no torn one under a real id."""

    def __init__(self, directory: str) -> None:
        self.root = Path(directory)  # made on the first write: a deployment without batches never has one

    def path(self, file_id: str) -> Path:
        if not file_id.startswith("file-") or not file_id[5:].isalnum():
            raise KeyError(file_id)
        return self.root / file_id

    def create(self, file_id: str) -> IO[bytes]:
        """A writer for a new file; `commit(file_id)` publishes it."""
        self.root.mkdir(parents=True, exist_ok=True)
        return open(self.root / f".{file_id}.part", "wb")

    def commit(self, file_id: str) -> None:
        os.replace(self.root / f".{file_id}.part", self.path(file_id))

    def discard(self, file_id: str) -> None:
        for path in (self.root / f".{file_id}.part", self.path(file_id)):
            path.unlink(missing_ok=True)

    def open(self, file_id: str) -> IO[bytes]:
        return open(self.path(file_id), "rb")

    def chunks(self, file_id: str, size: int = 1 << 16) -> Iterator[bytes]:
        with self.open(file_id) as f:
            while block := f.read(size):
                yield block

    def append(self, file_id: str) -> IO[bytes]:
        """An appender to a file not yet committed (a running batch's output)."""
        return open(self.root / f".{file_id}.part", "ab")

    def truncate(self, file_id: str, size: int) -> None:
        """Cut an uncommitted file back to `size` bytes (what was recorded as written before a crash)."""
        part = self.root / f".{file_id}.part"
        with open(part, "ab") as f:
            f.truncate(size)

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir() if p.name.startswith("file-")]

    def stale_parts(self, older_than_s: float) -> list[Path]:
        now = time.time()
        if not self.root.is_dir():
            return []
        return [p for p in self.root.glob(".file-*.part") if now - p.stat().st_mtime > older_than_s]

    def age_s(self, file_id: str) -> float:
        return time.time() - self.path(file_id).stat().st_mtime


async def save(redis: Redis, keys: Keys, stored: StoredFile) -> None:
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    pipe.set(keys.file(stored.file.id), _stored_encoder.encode(stored), exat=stored.file.expires_at)
    index = keys.files(stored.tenant)
    pipe.zadd(index, {stored.file.id: now})  # not created_at: files of one second keep their order
    pipe.zremrangebyscore(index, "-inf", now - MAX_TTL_S)
    pipe.expireat(index, int(now) + MAX_TTL_S)
    await pipe.execute()


async def load(redis: Redis, keys: Keys, file_id: str, tenant: str) -> StoredFile | None:
    """The file as `tenant` may see it (None: absent, expired, or another tenant's)."""
    raw = await redis.get(keys.file(file_id))
    if raw is None:
        return None
    stored = _stored_decoder.decode(raw)
    return stored if stored.tenant == tenant else None


async def listing(redis: Redis, keys: Keys, tenant: str, *, after: str | None, limit: int, ascending: bool,
                  purpose: str | None) -> tuple[list[FileObject], bool]:
    """A page of the tenant's files (newest first unless `ascending`), and whether more follow."""
    index = keys.files(tenant)
    ids = [i.decode() for i in await redis.zrange(index, 0, -1, desc=not ascending)]
    if after is not None:
        ids = ids[ids.index(after) + 1:] if after in ids else []
    found: list[FileObject] = []
    for start in range(0, len(ids), 500):
        batch = ids[start:start + 500]
        for raw in await get_many(redis, [keys.file(i) for i in batch]):
            if raw is not None:
                stored = _stored_decoder.decode(raw)
                if purpose is None or stored.file.purpose == purpose:
                    found.append(stored.file)
        if len(found) > limit:
            break
    return found[:limit], len(found) > limit


async def delete(redis: Redis, keys: Keys, store: FileStore, stored: StoredFile) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.delete(keys.file(stored.file.id))
    pipe.zrem(keys.files(stored.tenant), stored.file.id)
    await pipe.execute()
    store.discard(stored.file.id)


# A batch's output is written for at most its 24 h window (and its wind-down): an uncommitted file
# older than this belongs to a batch that is gone.
STALE_PART_S = 7 * 86_400


async def sweep(redis: Redis, keys: Keys, store: FileStore, *, min_age_s: float = 3600) -> int:
    """Delete the bodies whose metadata is gone (expired or never committed); how many."""
    removed = 0
    for part in store.stale_parts(STALE_PART_S):
        part.unlink(missing_ok=True)
        removed += 1
    for file_id in store.ids():
        if store.age_s(file_id) >= min_age_s and not await redis.exists(keys.file(file_id)):
            store.discard(file_id)
            removed += 1
    return removed
