"""Async jobs: a request sent with `Prefer: respond-async` (RFC 7240) is answered 202 at once and
runs like any other job (same lanes, limits, routing, failover); the client polls for it.

State lives in two keys, both bounded by the job's deadline plus `server.async_result_ttl_s`:

    {ns}:job:<id>      hash: `r` the record below (msgpack, written once by the API before the job
                       is queued), `started` (set by the worker that runs it), `cancelled` (DELETE)
    {ns}:result:<id>   the terminal reply, written by the worker as for every job, but kept
                       `async_result_ttl_s` instead of `result_ttl_s` (Job.async_ttl_s)

A status is derived, never stored, so no writer can overwrite another's: a result means
completed, failed or cancelled (a running job that was cancelled ends with the client-gone
error); otherwise `cancelled` if asked, `expired` past the deadline, `in_progress` once a worker
started it, else `queued`.
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from broker.errors import BrokerError, ErrorBody, RequestTimeout
from broker.keys import Keys
from broker.queue.jobs import Failed, Final, Job, reply_decoder
from broker.queue.streams import cancel

Status = Literal["queued", "in_progress", "completed", "failed", "cancelled", "expired"]
# The code of the error a worker ends a cancelled job with (workers/loop.py CLIENT_GONE).
CANCELLED_CODE = "client_disconnected"


class Record(msgspec.Struct, array_like=True, frozen=True):
    tenant: str
    model: str
    created: float
    deadline: float
    providers: list[str]  # every provider the job may run on: a cancellation reaches them all
    streams: bool
    lane: str
    dialect: str = "openai"  # how its stream is framed (broker/queue/payloads.py); appended: array_like


class JobView(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What `GET /v1/jobs/{id}` answers (and the 202 of a submission)."""

    id: str
    object: Literal["job"]
    status: Status
    created_at: int
    model: str
    stream: bool  # a streamed job's events are read at /v1/jobs/{id}/events
    expires_at: int  # its deadline: not finished by then, it is `expired`
    response: msgspec.Raw | None = None  # the exact body a synchronous call would have returned
    error: ErrorBody | None = None  # the OpenAI-shaped error it failed with


_record_decoder = msgspec.msgpack.Decoder(Record)
_encoder = msgspec.msgpack.Encoder()


def record_of(job: Job) -> Record:
    providers = list(dict.fromkeys([job.provider, *(t.provider for t in job.fallbacks)]))
    return Record(job.tenant, job.model, job.created, job.deadline, providers, job.streams, job.lane,
                  job.payload.dialect)


async def submit(redis: Redis, keys: Keys, job: Job) -> JobView:
    """Write the job's record; the caller queues the job right after."""
    key = keys.job(job.id)
    pipe = redis.pipeline(transaction=False)
    pipe.hset(key, mapping={"r": _encoder.encode(record_of(job))})
    pipe.expireat(key, int(job.deadline) + job.async_ttl_s)
    await pipe.execute()
    return view(job.id, record_of(job), {}, None)


def mark_started(pipe: Pipeline, keys: Keys, job: Job) -> None:
    """A worker began the job (queued on the outbox's pipeline)."""
    key = keys.job(job.id)
    pipe.hset(key, "started", "1")
    pipe.expireat(key, int(job.deadline) + job.async_ttl_s)  # never left without an expiry


class Found(msgspec.Struct, frozen=True):
    record: Record
    flags: dict[bytes, bytes]
    result: bytes | None


async def load(redis: Redis, keys: Keys, job_id: str, tenant: str) -> Found | None:
    """The job as `tenant` may see it: None if it does not exist, expired, or is another tenant's."""
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.job(job_id))
    pipe.get(keys.result(job_id))
    fields, result = await pipe.execute()
    if b"r" not in fields:
        return None
    record = _record_decoder.decode(fields.pop(b"r"))
    if record.tenant != tenant:
        return None
    return Found(record, fields, result)


def view(job_id: str, record: Record, flags: dict[bytes, bytes], result: bytes | None) -> JobView:
    status: Status
    response = error = None
    reply = reply_decoder.decode(result) if result is not None else None
    if isinstance(reply, Final):
        status = "completed"
        response = msgspec.Raw(reply.body) if reply.body else None
    elif isinstance(reply, Failed):
        # Ran out of its deadline (in the queue or upstream): expired, with the timeout error.
        status = ("cancelled" if reply.error.code == CANCELLED_CODE
                  else "expired" if reply.error.type == RequestTimeout.type else "failed")
        if status != "cancelled":
            error = BrokerError.from_info(reply.error).to_body().error
    elif b"cancelled" in flags:
        status = "cancelled"
    elif time.time() > record.deadline:
        status = "expired"
    else:
        status = "in_progress" if b"started" in flags else "queued"
    return JobView(id=job_id, object="job", status=status, created_at=int(record.created), model=record.model,
                   stream=record.streams, expires_at=int(record.deadline), response=response, error=error)


async def cancel_job(redis: Redis, keys: Keys, job_id: str, found: Found) -> JobView:
    """Cancel the job unless it has ended; either way, answer what it is now."""
    current = view(job_id, found.record, found.flags, found.result)
    if current.status not in ("queued", "in_progress"):
        return current
    await redis.hset(keys.job(job_id), mapping={"cancelled": "1"})  # type: ignore[misc]  # (redis-py's stub)
    await cancel(redis, keys, found.record.providers, job_id, found.record.deadline)
    return view(job_id, found.record, {**found.flags, b"cancelled": b"1"}, None)
