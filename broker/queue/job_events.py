"""Resumable streams: every streamed job's replies are also kept in a per-job Redis list.

The live path is pub/sub (broker/queue/replies.py): fast, but a message nobody hears is gone. So the
worker's outbox also appends each burst it publishes, and the terminal reply, to `{ns}:ev:<job>` in
the same pipeline. A client whose connection dropped, or any client of an async job, reads it back
with `GET /v1/jobs/{id}/events` and `Last-Event-ID`: the events after that id, then the live ones as
they are appended, then `[DONE]`.

Event ids are `<attempt>.<index>`: the index counts the events of one attempt from 0. A job
reclaimed from a dead worker starts over as attempt + 1; a client that already holds events of
the old attempt cannot be given the new one's without duplicating or garbling output, so it gets
an explicit error instead (as the live path does: broker/queue/replies.py `AttemptRestarted`).

An element keeps what a resume needs, not the reply as published: a burst is `e` + msgpack
`[attempt, *events]`, each event as its edit of the event before (broker/queue/event_deltas.py), which
makes an event of a long stream cost tens of bytes instead of its whole JSON, or whole, deflated
against a dictionary of the protocols' field names (broker/queue/whole_events.py). A burst of one
event that is a one-hole edit, a long stream's usual element, is `d` + its attempt, copy and skip as
varints + the inserted bytes (`_edit_element`: about 6 bytes + the text, not 11; `queue.write_format:
1` writes `e` instead, for the release before's readers during a rolling upgrade). The terminal
reply is `r` + the whole msgpack reply. An edit chains to the previous element, so after a failed
flush (an element maybe lost) the worker starts the chain again from a whole event (`EventLog.reset`).
Each attempt's first burst is preceded by an `o` element: who may read the stream (its tenant) and how
to cancel the job (its providers and deadline), so any API process can serve and cancel a stream it did
not start. The key expires `stream_resume_ttl_s` after the job's end (async jobs: their result TTL),
and in any case a while after its deadline.

Why a list and not a Redis stream, as the previous release kept (and this one still reads): Redis
preallocates 4 KB for a stream's first node (t_stream.c, `STREAM_LISTPACK_MAX_PRE_ALLOCATE`), which
was most of what an open stream held in Redis; a list of a few short elements is a few hundred bytes.
What a stream gave for free, a reader blocking until the next entry, a list does not, so a reader that
has read everything rings a bell: it makes `{ns}:evbell:<job>` exist (a stream of one entry) and blocks
on it with XREAD; a worker appends each burst with an `XADD ... NOMKSTREAM` to that bell, which costs
nothing when no reader made it exist. A reader arms the bell before it reads the list once more, so an
element appended in between is read, not waited for.

A client that drops no longer cancels its job at once: `cancel_unless_resumed` waits
`stream_resume_grace_s`, and cancels only if nobody has attached meanwhile (`{ns}:readers:<job>`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from broker.keys import Keys
from broker.queue import event_deltas, whole_events
from broker.queue.jobs import Chunk, Job, Reply, reply_decoder
from broker.queue.streams import cancel

# A job cannot run past its deadline; its events stay at least this long after it regardless.
EXPIRY_MARGIN_S = 60
READ_BATCH = 100


class Origin(msgspec.Struct, frozen=True, array_like=True):
    """Who may read a job's stream, and how to cancel the job."""

    tenant: str
    providers: list[str]
    deadline: float
    dialect: str = "openai"  # how its events are framed (broker/queue/payloads.py); _origin leaves it out


def _origin(job: Job) -> bytes:
    """The `o` element: an Origin as a short array, which every release's reader decodes to the same Origin.
    Its deadline in whole seconds, rounded up (5 bytes, not a double's 9: it bounds a cancel's and a
    reader's wait); its dialect left out when it is the default (Origin's trailing field)."""
    providers = list(dict.fromkeys([job.provider, *(t.provider for t in job.fallbacks)]))
    fields: list[object] = [job.tenant, providers, math.ceil(job.deadline)]
    if job.payload.dialect != "openai":  # Origin's default
        fields.append(job.payload.dialect)
    return b"o" + _origin_encoder.encode(fields)


class EventLog:
    """A worker's writer of its streamed jobs' events: it holds the last event each job logged,
    which that job's next event is written as an edit of."""

    def __init__(self, keys: Keys, write_format: int = 2) -> None:
        self.keys = keys
        self.write_format = write_format  # 1: no `d` elements, which the release before cannot read
        self._last: dict[str, bytes] = {}

    def record(self, pipe: Pipeline, job: Job, seq: int, events: list[bytes]) -> None:
        """Queue a burst of a streamed job's events (the Chunk just published) on the outbox pipeline."""
        if not job.streams or job.payload.dialect == "audio":  # raw audio has no event ids to resume from
            return
        key = self.keys.event_log(job.id)
        previous = self._last.get(job.id) if seq > 0 else None  # an attempt starts from a whole event
        items = [whole_events.pack(item) if isinstance(item, bytes) else item
                 for item in event_deltas.compact(previous, events)]
        if seq > 0 and len(items) == 1 and isinstance(items[0], list) and len(items[0]) == 3 and self.write_format > 1:
            entry = _edit_element(job.attempt, items[0])  # the usual element of a long stream
        else:
            entry = b"e" + _entry_encoder.encode([job.attempt, *items])
        if events:
            self._last[job.id] = events[-1]
        if seq == 0:  # an attempt's first burst: who may read it, once, and an expiry past any end
            pipe.rpush(key, _origin(job), entry)
            pipe.expireat(key, int(job.deadline) + max(job.async_ttl_s, EXPIRY_MARGIN_S))
        else:
            pipe.rpush(key, entry)
        _ring(pipe, self.keys, job.id)

    def record_end(self, pipe: Pipeline, job: Job, seq: int, encoded_terminal: bytes, ttl_s: int) -> None:
        """Queue a streamed job's terminal reply; its events then stay `ttl_s` for late readers."""
        if job.payload.dialect == "audio":
            return
        self._last.pop(job.id, None)
        key = self.keys.event_log(job.id)
        if seq == 0:
            pipe.rpush(key, _origin(job), b"r" + encoded_terminal)
        else:
            pipe.rpush(key, b"r" + encoded_terminal)
        pipe.expire(key, ttl_s)
        _ring(pipe, self.keys, job.id)

    def forget(self, job_id: str) -> None:
        self._last.pop(job_id, None)

    def reset(self) -> None:
        """A flush failed: an entry may be missing, so every job's next entry starts from a whole event."""
        self._last.clear()


def _edit_element(attempt: int, edit: event_deltas.Edit) -> bytes:
    """`d`: one event as a one-hole edit of the event before, in the bytes an `e` element spends on its text
    less five: attempt, copy and skip as varints, then the inserted bytes to the element's end. One event
    a burst is what a stream at a model's pace mostly flushes, so this is most of a long stream's log."""
    copy, skip, insert = edit
    if not isinstance(copy, int) or not isinstance(skip, int) or not isinstance(insert, bytes):
        raise TypeError("not a one-hole edit")
    return b"d" + _varint(attempt) + _varint(copy) + _varint(skip) + insert


def _varint(n: int) -> bytes:
    """`n` >= 0 in LEB128, as protobuf's varints: 7 bits a byte, low first, the high bit set on all but the last."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """A varint at `at`: its value and the offset after it."""
    n = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("a varint cut short")
        byte = data[at]
        n |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return n, at
        shift += 7


def _ring(pipe: Pipeline, keys: Keys, job_id: str) -> None:
    # NOMKSTREAM: no-op unless a waiting reader made the bell exist (Redis >= 6.2).
    pipe.xadd(keys.event_bell(job_id), {"b": b""}, maxlen=1, approximate=False, nomkstream=True)


_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(list[int | bytes | list[int | bytes] | msgspec.msgpack.Ext])
_origin_encoder = msgspec.msgpack.Encoder()
_origin_decoder = msgspec.msgpack.Decoder(Origin)


class _Reader:
    """Replies from elements read in order: an `e` element's edits need the event read before them."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.attempt = self.seq = 0
        self.previous: bytes | None = None

    def element(self, element: bytes) -> Reply | None:
        """A list element's reply; None for an origin."""
        kind, body = element[:1], element[1:]
        if kind == b"d":
            attempt, at = _read_varint(body, 0)
            copy, at = _read_varint(body, at)
            skip, at = _read_varint(body, at)
            return self._chunk(attempt, [[copy, skip, body[at:]]])
        if kind == b"e":
            return self._events(body)
        if kind == b"r":
            return self._terminal(body)
        if kind == b"o":
            return None
        raise ValueError(f"job {self.job_id}: not an event log element")

    def entry(self, fields: dict[bytes, bytes]) -> Reply:
        """A reply from an entry of the stream the previous release kept."""
        return self._events(fields[b"e"]) if b"e" in fields else self._terminal(fields[b"r"])

    def _terminal(self, encoded: bytes) -> Reply:
        reply: Reply = reply_decoder.decode(encoded)
        self._turn(reply.attempt)
        self.seq += 1
        if isinstance(reply, Chunk) and reply.events:  # the release before edits kept bursts whole
            self.previous = reply.events[-1]
        return reply

    def _events(self, encoded: bytes) -> Reply:
        attempt, *rest = _entry_decoder.decode(encoded)
        items = [whole_events.unpack(item) if isinstance(item, msgspec.msgpack.Ext) else item
                 for item in rest if not isinstance(item, int)]
        if not isinstance(attempt, int) or len(items) != len(rest):
            raise ValueError(f"job {self.job_id}: not an event log entry")
        return self._chunk(attempt, items)

    def _chunk(self, attempt: int, items: list[event_deltas.Item]) -> Reply:
        self._turn(attempt)
        reply = Chunk(self.job_id, attempt, self.seq, event_deltas.expand(self.previous, items))
        self.seq += 1
        if reply.events:
            self.previous = reply.events[-1]
        return reply

    def _turn(self, attempt: int) -> None:
        if attempt != self.attempt:  # a new attempt numbers its replies from 0 and starts from a whole event
            self.attempt, self.seq, self.previous = attempt, 0, None


async def origin(redis: Redis, keys: Keys, job_id: str) -> Origin | None:
    """The stream's origin, or None if the job has no events (yet, or any more)."""
    first: Any = await redis.lindex(keys.event_log(job_id), 0)  # type: ignore[misc]
    if first is not None:
        return _origin_decoder.decode(first[1:]) if first[:1] == b"o" else None
    entries: Any = await redis.xrange(keys.events(job_id), count=1)  # a log the previous release wrote
    if not entries or b"t" not in entries[0][1]:
        return None
    fields = entries[0][1]
    return Origin(fields[b"t"].decode(), fields[b"p"].decode().split(","), float(fields[b"d"]),
                  fields.get(b"f", b"openai").decode())


async def replies(redis: Redis, job_id: str, keys: Keys, *, wait_s: float,
                  deadline: float | None = None) -> AsyncIterator[Reply | None]:
    """The job's replies from its first, then each one as it is appended; None after `wait_s`
    without one (time for a keep-alive), until the caller stops. `deadline`: the job's, which the bell
    this reader may ring outlives."""
    if not await redis.exists(keys.event_log(job_id)) and await redis.exists(keys.events(job_id)):
        async for reply in _previous_release(redis, job_id, keys, wait_s=wait_s):
            yield reply
        return
    key, bell, cursor = keys.event_log(job_id), keys.event_bell(job_id), 0
    block_ms = max(1, int(wait_s * 1000))
    bell_expiry = int(deadline if deadline is not None else time.time() + 3600) + EXPIRY_MARGIN_S
    reader = _Reader(job_id)
    rung: bytes | None = None  # the bell's entry this reader armed it with, or last heard
    drained = False  # the list was read to its end after the bell's last entry
    while True:
        if not drained:
            elements: Any = await redis.lrange(key, cursor, cursor + READ_BATCH - 1)  # type: ignore[misc]
            for element in elements:
                cursor += 1
                if (reply := reader.element(element)) is not None:
                    yield reply
            drained = len(elements) < READ_BATCH
            continue
        if rung is None:  # armed, then the list read again: an element appended in between is not missed
            pipe = redis.pipeline(transaction=False)
            pipe.xadd(bell, {"b": b""}, maxlen=1, approximate=False)
            pipe.expireat(bell, bell_expiry)
            rung, drained = (await pipe.execute())[0], False
            continue
        read: Any = await redis.xread({bell: rung}, count=1, block=block_ms)
        drained = False
        if not read:
            yield None
            rung = None  # armed again after each quiet wait: a bell lost meanwhile (a Redis restart) is rebuilt
            continue
        rung = read[0][1][-1][0]


async def _previous_release(redis: Redis, job_id: str, keys: Keys, *, wait_s: float) -> AsyncIterator[Reply | None]:
    """A log the previous release wrote: a Redis stream, read with a blocking XREAD."""
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
            yield reader.entry(fields)


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
