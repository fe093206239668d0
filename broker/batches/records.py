"""The Batch API's records: OpenAI's batch object (https://platform.openai.com/docs/api-reference/batch/object),
kept in Redis.

    {ns}:batch:<id>   hash. `b`: the batch object (JSON), written by the API at creation and by
                      the batch worker (broker/batches/runner.py) after that, clients see it
                      through `as_seen`; `t`: the tenant;
                      `cancel`: when the client asked to cancel it (the API writes only this
                      field, so it never races the worker's writes of `b`); the runner's cursor
                      and output offsets. Expires `batches.retention_days` after the batch ends.
    {ns}:batches:<tenant>  ZSET of the tenant's batch ids by creation (listing); trimmed past retention
    {ns}:batches:active    ZSET of batches not yet ended, by creation: what the batch worker runs
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

import msgspec
from redis.asyncio import Redis

from broker.keys import Keys

Status = Literal["validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
                 "cancelled"]
ENDED: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
WINDOW_S = {"24h": 86_400}


class RequestCounts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchError(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(msgspec.Struct):
    data: list[BatchError]
    object: Literal["list"] = "list"


class Batch(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Status
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = msgspec.field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None


class BatchPage(msgspec.Struct):
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


_decoder = msgspec.json.Decoder(Batch)
_encoder = msgspec.json.Encoder()


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def as_seen(batch: Batch, fields: dict[bytes, bytes]) -> Batch:
    """The batch as a client sees it: `cancelling` from the moment it asked, until the worker has ended it;
    and no file ids until then. The runner names both output files when the batch starts and appends to
    them uncommitted; they become files (or, empty, go) only as it ends, and OpenAI reports an id only
    for a file there is (https://platform.openai.com/docs/api-reference/batch/object)."""
    if batch.status in ENDED:
        return batch
    seen = msgspec.structs.replace(batch, output_file_id=None, error_file_id=None)
    asked = fields.get(b"cancel")
    if asked is not None:
        return msgspec.structs.replace(seen, status="cancelling", cancelling_at=int(float(asked)))
    return seen


async def create(redis: Redis, keys: Keys, tenant: str, batch: Batch, retention_days: int, *, key: str | None) -> None:
    """A new batch of `tenant`, sent with its key named `key` (whose limits and budgets its lines count against)."""
    pipe = redis.pipeline(transaction=False)
    record = keys.batch(batch.id)
    pipe.hset(record, mapping={"b": _encoder.encode(batch), "t": tenant, "k": key or ""})
    pipe.expireat(record, batch.expires_at + retention_days * 86_400)
    index = keys.batches(tenant)
    pipe.zadd(index, {batch.id: time.time()})  # not created_at: batches of one second keep their order
    pipe.zremrangebyscore(index, "-inf", time.time() - WINDOW_S["24h"] - retention_days * 86_400)
    pipe.expireat(index, batch.expires_at + retention_days * 86_400)
    pipe.zadd(keys.active_batches(), {batch.id: batch.created_at})
    await pipe.execute()


class Loaded(msgspec.Struct):
    batch: Batch
    tenant: str
    fields: dict[bytes, bytes]


async def load(redis: Redis, keys: Keys, batch_id: str, tenant: str | None = None) -> Loaded | None:
    """The batch (None: absent, expired, or not `tenant`'s when one is given)."""
    fields: dict[bytes, bytes] = await redis.hgetall(keys.batch(batch_id))  # type: ignore[misc]
    if b"b" not in fields or (tenant is not None and fields.get(b"t", b"").decode() != tenant):
        return None
    return Loaded(_decoder.decode(fields[b"b"]), fields[b"t"].decode(), fields)


async def save(redis: Redis, keys: Keys, batch: Batch, retention_days: int, **extra: Any) -> None:
    """The worker's write of the batch object (and of its own fields in `extra`)."""
    key = keys.batch(batch.id)
    pipe = redis.pipeline(transaction=False)
    pipe.hset(key, mapping={"b": _encoder.encode(batch), **extra})
    if batch.status in ENDED:
        pipe.expire(key, retention_days * 86_400)
        pipe.zrem(keys.active_batches(), batch.id)
    await pipe.execute()


async def ask_cancel(redis: Redis, keys: Keys, batch_id: str) -> None:
    await redis.hsetnx(keys.batch(batch_id), "cancel", repr(time.time()))  # type: ignore[misc]  # (redis-py's stub)


async def page(redis: Redis, keys: Keys, tenant: str, *, after: str | None, limit: int) -> BatchPage:
    """Newest first, `limit` after the batch `after` (the SDK's cursor)."""
    ids = [i.decode() for i in await redis.zrange(keys.batches(tenant), 0, -1, desc=True)]
    if after is not None:
        ids = ids[ids.index(after) + 1:] if after in ids else []
    found: list[Batch] = []
    for batch_id in ids:
        loaded = await load(redis, keys, batch_id, tenant)
        if loaded is not None:
            found.append(as_seen(loaded.batch, loaded.fields))
        if len(found) > limit:
            break
    data = found[:limit]
    return BatchPage(data, data[0].id if data else None, data[-1].id if data else None, len(found) > limit)
