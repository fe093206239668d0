"""Files for the Batch API: bodies in a file store, metadata in Redis.

File bodies never enter Redis memory: a 200 MB batch input would not fit a cache. They live in
a `FileStore` (broker/batches/store.py): a directory every API and batch-worker process of a
deployment shares (`batches.files_dir`), or an S3-compatible bucket (`batches.s3`).

    {ns}:file:<id>        msgpack `StoredFile`; expires with the file (`batches.file_ttl_days`)
    {ns}:files:<tenant>   ZSET of the tenant's file ids by creation; members past the longest
                          possible lifetime are trimmed on every upload

A file whose metadata expired is deleted from the store by the batch worker's sweep.
"""

from __future__ import annotations

import secrets
import time
from typing import Literal

import msgspec
from redis.asyncio import Redis

from broker.batches.store import FileStore
from broker.config.batches import BatchSettings
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


def open_store(settings: BatchSettings) -> FileStore:
    """The file store the config names (its connections open on first use)."""
    if settings.s3 is not None:
        from broker.batches.s3_store import S3FileStore  # botocore loads only where a bucket is configured

        return S3FileStore(settings.s3)
    from broker.batches.directory_store import DirectoryStore

    return DirectoryStore(settings.store_dir)


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


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
    await store.delete(stored.file.id)


# A batch's output is written for at most its 24 h window (and its wind-down): an uncommitted file
# older than this belongs to a batch that is gone.
STALE_PART_S = 7 * 86_400


async def sweep(redis: Redis, keys: Keys, store: FileStore, *, min_age_s: float = 3600) -> int:
    """Delete the bodies whose metadata is gone (expired or never committed); how many.

    `min_age_s` spares a file just written whose metadata is about to be saved (an upload between
    its body and its record)."""
    removed = 0
    async for entry in store.entries():
        if entry.committed:
            gone = entry.age_s >= min_age_s and not await redis.exists(keys.file(entry.file_id))
        else:
            gone = entry.age_s > STALE_PART_S
        if gone:
            await store.remove(entry)
            removed += 1
    return removed
