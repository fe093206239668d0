"""Resumable streams: every streamed job's replies are also kept in a per-job Redis stream.

The live path is pub/sub (broker/queue/replies.py): fast, but a message nobody hears is gone. So the
worker's outbox also appends each burst it publishes, and the terminal reply, to
`{ns}:events:<job>` in the same pipeline. A client whose connection dropped, or any client of
an async job, reads it back with `GET /v1/jobs/{id}/events` and `Last-Event-ID`: the events
after that id, then the live ones as they are appended, then `[DONE]`.

Event ids are `<attempt>.<index>`: the index counts the events of one attempt from 0. A job
reclaimed from a dead worker starts over as attempt + 1; a client that already holds events of
the old attempt cannot be given the new one's without duplicating or garbling output, so it gets
an explicit error instead (as the live path does: broker/queue/replies.py `AttemptRestarted`).

An entry keeps what a resume needs, not the reply as published: a burst is `e`, msgpack
`[attempt, *events]`, each event whole or as its edit of the event before (broker/queue/event_deltas.py),
which makes an event of a long stream cost tens of bytes instead of its whole JSON. The terminal
reply is `r`, the whole msgpack reply, as every entry was before this release; a reader takes both.
An edit chains to the previous entry, so after a failed flush (an entry maybe lost) the worker starts
the chain again from a whole event (`EventLog.reset`).

The first entry of each attempt carries who may read the stream (its tenant) and how to cancel
the job (its providers and deadline), so any API process can serve and cancel a stream it did
not start. The key expires `stream_resume_ttl_s` after the job's end (async jobs: their result
TTL), and in any case a while after its deadline.

A client that drops no longer cancels its job at once: `cancel_unless_resumed` waits
`stream_resume_grace_s`, and cancels only if nobody has attached meanwhile (`{ns}:readers:<job>`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from broker.keys import Keys
from broker.queue import event_deltas
from broker.queue.jobs import Chunk, Job, Reply, reply_decoder
from broker.queue.streams import cancel

# A job cannot run past its deadline; its events stay at least this long after it regardless.
EXPIRY_MARGIN_S = 60
READ_BATCH = 100


class Origin(msgspec.Struct, frozen=True):
    """Who may read a job's stream, and how to cancel the job."""

    tenant: str
    providers: list[str]
    deadline: float
    dialect: str = "openai"  # how its events are framed (broker/queue/payloads.py)


def _origin_fields(job: Job) -> dict[Any, Any]:
    providers = ",".join(dict.fromkeys([job.provider, *(t.provider for t in job.fallbacks)]))
    fields = {"t": job.tenant, "p": providers, "d": repr(job.deadline)}
    if job.payload.dialect != "openai":  # the default: entries written before the field existed read as it
        fields["f"] = job.payload.dialect
    return fields


class EventLog:
    """A worker's writer of its streamed jobs' events: it holds the last event each job logged,
    which that job's next event is written as an edit of."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self._last: dict[str, bytes] = {}

    def record(self, pipe: Pipeline, job: Job, seq: int, events: list[bytes]) -> None:
        """Queue a burst of a streamed job's events (the Chunk just published) on the outbox pipeline."""
        if not job.streams or job.payload.dialect == "audio":  # raw audio has no event ids to resume from
            return
        key = self.keys.events(job.id)
        previous = self._last.get(job.id) if seq > 0 else None  # an attempt starts from a whole event
        entry: dict[Any, Any] = {"e": _entry_encoder.encode([job.attempt, *event_deltas.compact(previous, events)])}
        if events:
            self._last[job.id] = events[-1]
        if seq == 0:  # an attempt's first burst: a few fields once, and an expiry past any end
            pipe.xadd(key, {**entry, **_origin_fields(job)})
            pipe.expireat(key, int(job.deadline) + max(job.async_ttl_s, EXPIRY_MARGIN_S))
        else:
            pipe.xadd(key, entry)

    def record_end(self, pipe: Pipeline, job: Job, seq: int, encoded_terminal: bytes, ttl_s: int) -> None:
        """Queue a streamed job's terminal reply; its events then stay `ttl_s` for late readers."""
        if job.payload.dialect == "audio":
            return
        self._last.pop(job.id, None)
        key = self.keys.events(job.id)
        pipe.xadd(key, {"r": encoded_terminal, **(_origin_fields(job) if seq == 0 else {})})
        pipe.expire(key, ttl_s)

    def forget(self, job_id: str) -> None:
        self._last.pop(job_id, None)

    def reset(self) -> None:
        """A flush failed: an entry may be missing, so every job's next entry starts from a whole event."""
        self._last.clear()


_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(list[int | bytes | list[int | bytes]])


class _Reader:
    """Replies from entries read in order: an `e` entry's edits need the event read before them."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.attempt = self.seq = 0
        self.previous: bytes | None = None

    def reply(self, fields: dict[bytes, bytes]) -> Reply:
        if b"e" not in fields:  # a terminal reply, or an entry of a release before edits
            reply: Reply = reply_decoder.decode(fields[b"r"])
            self._turn(reply.attempt)
        else:
            attempt, *rest = _entry_decoder.decode(fields[b"e"])
            items = [item for item in rest if not isinstance(item, int)]
            if not isinstance(attempt, int) or len(items) != len(rest):
                raise ValueError(f"job {self.job_id}: not an event log entry")
            self._turn(attempt)
            reply = Chunk(self.job_id, attempt, self.seq, event_deltas.expand(self.previous, items))
        self.seq += 1
        if isinstance(reply, Chunk) and reply.events:
            self.previous = reply.events[-1]
        return reply

    def _turn(self, attempt: int) -> None:
        if attempt != self.attempt:  # a new attempt numbers its replies from 0 and starts from a whole event
            self.attempt, self.seq, self.previous = attempt, 0, None


async def origin(redis: Redis, keys: Keys, job_id: str) -> Origin | None:
    """The stream's origin, or None if the job has no events (yet, or any more)."""
    first: Any = await redis.xrange(keys.events(job_id), count=1)
    if not first or b"t" not in first[0][1]:
        return None
    fields = first[0][1]
    return Origin(fields[b"t"].decode(), fields[b"p"].decode().split(","), float(fields[b"d"]),
                  fields.get(b"f", b"openai").decode())


async def replies(redis: Redis, job_id: str, keys: Keys, *, wait_s: float) -> AsyncIterator[Reply | None]:
    """The job's replies from its first, then each one as it is appended; None after `wait_s`
    without one (time for a keep-alive), until the caller stops."""
    key, cursor = keys.events(job_id), "0-0"
    block_ms = max(1, int(wait_s * 1000))
    reader = _Reader(job_id)
    while True:
        read: Any = await redis.xread({key: cursor}, count=READ_BATCH, block=block_ms)
        if not read:
            yield None
            continue
        for entry_id, fields in read[0][1]:
            cursor = entry_id
            yield reader.reply(fields)


def parse_event_id(value: str | None) -> tuple[int, int] | None:
    """`Last-Event-ID` → (attempt, index), None if absent; ValueError if it is not one of ours."""
    if value is None or not value.strip():
        return None
    attempt, _, index = value.strip().partition(".")
    parsed = int(attempt), int(index)
    if parsed[0] < 1 or parsed[1] < 0:
        raise ValueError(value)
    return parsed


async def attach(redis: Redis, keys: Keys, job_id: str, deadline: float) -> None:
    """A resumed client reads the stream: its job is not cancelled for the one that left."""
    pipe = redis.pipeline(transaction=False)
    pipe.incr(keys.readers(job_id))
    pipe.expireat(keys.readers(job_id), int(deadline) + 1)
    await pipe.execute()


async def detach(redis: Redis, keys: Keys, job_id: str) -> int:
    """A resumed client left; how many still read."""
    return int(await redis.decr(keys.readers(job_id)))


async def cancel_unless_resumed(redis: Redis, keys: Keys, providers: list[str], job_id: str, deadline: float,
                                grace_s: float) -> None:
    """The client left mid-stream: cancel the job unless a client attaches within `grace_s`."""
    if grace_s > 0:
        await asyncio.sleep(min(grace_s, max(deadline - time.time(), 0)))
        if int(await redis.get(keys.readers(job_id)) or 0) > 0:
            return
    await cancel(redis, keys, providers, job_id, deadline)
