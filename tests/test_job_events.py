"""The event log (broker/queue/job_events.py) on real Redis: what a worker records is what a resuming
reader gets, a waiting reader wakes on the next burst, the logs previous releases wrote still read, and a
failed flush never garbles what follows."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from redis.asyncio import Redis

from broker.errors import ErrorInfo
from broker.keys import Keys
from broker.queue import event_deltas, job_events
from broker.queue.jobs import Chunk, Failed, Final, Job, Reply, Target, reply_encoder
from broker.queue.payloads import ChatPayload, MessagesPayload
from broker.wire.chat import ChatRequest
from tests.harness import REDIS_URL
from tests.test_event_deltas import chat_events


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


def job(attempt: int = 1) -> Job:
    request = msgspec.convert({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                              ChatRequest)
    return Job(id="0123456789abcdef0123456789abcdef", tenant="t", model="m", provider="p", upstream_model="u",
               reply_to="r", created=time.time(), deadline=time.time() + 60, payload=ChatPayload(request),
               attempt=attempt)


async def read_all(redis: Redis, keys: Keys, job_id: str) -> list[Reply]:
    out: list[Reply] = []
    async for reply in job_events.replies(redis, job_id, keys, wait_s=0.05):
        if reply is None or isinstance(reply, Final | Failed):
            return out + ([reply] if reply is not None else [])
        out.append(reply)
    return out


def events_of(replies: list[Reply], attempt: int | None = None) -> list[bytes]:
    return [e for r in replies if isinstance(r, Chunk) and attempt in (None, r.attempt) for e in r.events]


async def test_what_a_worker_records_a_reader_gets_back_byte_for_byte(redis: Redis, namespace: str) -> None:
    keys, j, stream = Keys(namespace), job(), chat_events()
    log = job_events.EventLog(keys)
    for seq, start in enumerate(range(0, len(stream), 3)):
        pipe = redis.pipeline(transaction=False)
        log.record(pipe, j, seq, stream[start:start + 3])
        await pipe.execute()
    pipe = redis.pipeline(transaction=False)
    log.record_end(pipe, j, seq + 1, reply_encoder.encode(Final(j.id, 1, seq + 1, b"")), 60)
    await pipe.execute()
    replies = await read_all(redis, keys, j.id)
    assert events_of(replies) == stream
    assert [r.seq for r in replies] == list(range(len(replies)))
    assert isinstance(replies[-1], Final)
    found = await job_events.origin(redis, keys, j.id)
    assert found is not None and (found.tenant, found.providers) == ("t", ["p"])
    # A list, not a stream: Redis preallocates 4 KB for a stream's first node, which a list does not pay.
    size = await redis.memory_usage(keys.event_log(j.id))
    assert size is not None and size < 1024 + sum(len(e) for e in stream) // 4, size
    assert await redis.ttl(keys.event_log(j.id)) > 0
    assert not await redis.exists(keys.event_bell(j.id))  # no reader waited: the worker's bell made nothing


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_the_origin_reads_as_the_job_s_in_every_release(redis: Redis, namespace: str, dialect: str) -> None:
    """The `o` element is a short array (whole seconds, no default dialect) that the Origin decoder, this
    release's and the one before's alike, reads as the job's origin."""
    keys, j = Keys(namespace), job()
    if dialect == "anthropic":
        j.payload = MessagesPayload(j.payload.request, b"{}")
    j.fallbacks = [Target("p2", "u2"), Target("p", "u3")]
    pipe = redis.pipeline(transaction=False)
    job_events.EventLog(keys).record(pipe, j, 0, chat_events()[:1])
    await pipe.execute()
    first = await redis.lindex(keys.event_log(j.id), 0)  # type: ignore[misc]
    assert first[:1] == b"o" and len(first) <= 20 + (len(dialect) + 1) * (dialect != "openai")
    found = await job_events.origin(redis, keys, j.id)
    assert found == job_events.Origin("t", ["p", "p2"], float(math.ceil(j.deadline)), dialect)
    assert j.deadline <= found.deadline < j.deadline + 1


async def test_a_waiting_reader_wakes_on_the_next_burst_not_on_its_keepalive(redis: Redis, namespace: str) -> None:
    keys, j, stream = Keys(namespace), job(), chat_events()
    log = job_events.EventLog(keys)
    got: list[tuple[float, Reply | None]] = []

    async def read() -> None:
        async for reply in job_events.replies(redis, j.id, keys, wait_s=5.0, deadline=j.deadline):
            got.append((time.monotonic(), reply))
            if isinstance(reply, Final):
                return

    reader = asyncio.create_task(read())
    for seq in range(3):
        await asyncio.sleep(0.2)  # the reader has read everything and waits on the bell
        sent = time.monotonic()
        pipe = redis.pipeline(transaction=False)
        log.record(pipe, j, seq, stream[seq:seq + 1])
        await pipe.execute()
        while len(got) <= seq:
            await asyncio.sleep(0.005)
        assert got[seq][0] - sent < 0.5, "woken by the burst, not by its 5 s keep-alive wait"
    pipe = redis.pipeline(transaction=False)
    log.record_end(pipe, j, 3, reply_encoder.encode(Final(j.id, 1, 3, b"")), 60)
    await pipe.execute()
    await asyncio.wait_for(reader, 2.0)
    assert events_of([r for _, r in got if r is not None]) == stream[:3]
    assert 0 < await redis.ttl(keys.event_bell(j.id)) <= int(j.deadline - time.time()) + job_events.EXPIRY_MARGIN_S + 1


async def test_a_reader_whose_bell_vanished_still_reads_at_its_next_keepalive(redis: Redis, namespace: str) -> None:
    keys, j, stream = Keys(namespace), job(), chat_events()
    log = job_events.EventLog(keys)
    replies = job_events.replies(redis, j.id, keys, wait_s=0.2, deadline=j.deadline)
    reading = asyncio.ensure_future(replies.__anext__())
    await asyncio.sleep(0.1)
    await redis.delete(keys.event_bell(j.id))  # as a Redis restart without persistence would
    pipe = redis.pipeline(transaction=False)
    log.record(pipe, j, 0, stream[:2])
    await pipe.execute()
    first = await asyncio.wait_for(reading, 2.0)
    if first is None:  # its keep-alive wait ended first: the list is read again after it
        first = await asyncio.wait_for(replies.__anext__(), 2.0)
    assert isinstance(first, Chunk) and first.events == stream[:2]
    await replies.aclose()


async def test_a_log_written_by_the_previous_release_still_reads(redis: Redis, namespace: str) -> None:
    """The previous release kept the log in a Redis stream, entries `e` (edits) and `r` (terminal), and the
    release before it whole `r` replies: both still read, through their end."""
    keys, j, stream = Keys(namespace), job(), chat_events()
    key = keys.events(j.id)
    await redis.xadd(key, {"r": reply_encoder.encode(Chunk(j.id, 1, 0, stream[:2], "p/u", 1)), "t": "t", "p": "p",
                           "d": repr(j.deadline)})
    await redis.xadd(key, {"r": reply_encoder.encode(Chunk(j.id, 1, 1, stream[2:5]))})
    edits = msgspec.msgpack.encode([1, *event_deltas.compact(stream[4], stream[5:8])])
    await redis.xadd(key, {"e": edits})
    await redis.xadd(key, {"r": reply_encoder.encode(Final(j.id, 1, 3, b""))})
    replies = await read_all(redis, keys, j.id)
    assert events_of(replies) == stream[:8]
    assert [r.seq for r in replies] == [0, 1, 2, 3]
    assert isinstance(replies[-1], Final)
    found = await job_events.origin(redis, keys, j.id)
    assert found is not None and (found.tenant, found.providers, found.dialect) == ("t", ["p"], "openai")


async def test_a_restarted_attempt_reads_after_the_first(redis: Redis, namespace: str) -> None:
    keys, j, stream = Keys(namespace), job(), chat_events()
    log = job_events.EventLog(keys)
    pipe = redis.pipeline(transaction=False)
    log.record(pipe, j, 0, stream[:2])
    log.record(pipe, j, 1, stream[2:5])
    await pipe.execute()
    # ...and another worker takes the job over after a restart: a new attempt, numbered from 0 again
    pipe = redis.pipeline(transaction=False)
    log.record(pipe, job(attempt=2), 0, stream[:4])
    log.record(pipe, job(attempt=2), 1, stream[4:6])
    log.record_end(pipe, job(attempt=2), 2, reply_encoder.encode(Failed(j.id, 2, 2, ErrorInfo(
        kind="UpstreamError", status=502, type="upstream_error", message="gone"))), 60)
    await pipe.execute()
    replies = await read_all(redis, keys, j.id)
    assert events_of(replies, 1) == stream[:5]
    assert events_of(replies, 2) == stream[:6]
    assert [(r.attempt, r.seq) for r in replies] == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert isinstance(replies[-1], Failed)


async def test_after_a_failed_flush_the_next_entry_stands_alone(redis: Redis, namespace: str) -> None:
    keys, j, stream = Keys(namespace), job(), chat_events()
    log = job_events.EventLog(keys)
    pipe = redis.pipeline(transaction=False)
    log.record(pipe, j, 0, stream[:3])
    await pipe.execute()
    log.record(redis.pipeline(transaction=False), j, 1, stream[3:6])  # never sent: its flush failed
    log.reset()
    pipe = redis.pipeline(transaction=False)
    log.record(pipe, j, 2, stream[6:9])
    log.record_end(pipe, j, 3, reply_encoder.encode(Final(j.id, 1, 3, b"")), 60)
    await pipe.execute()
    replies = await read_all(redis, keys, j.id)
    assert events_of(replies) == stream[:3] + stream[6:9]  # a gap, as before; never garbled bytes


@pytest.mark.parametrize("write_format", [1, 2])
async def test_one_event_bursts_read_back_byte_for_byte_and_format_2_keeps_them_smaller(
        redis: Redis, namespace: str, write_format: int) -> None:
    """A stream at a model's pace flushes one event at a time: format 2 writes those as `d` elements,
    format 1 (for the release before's readers) as `e`; both read back the same events."""
    keys, j, stream = Keys(namespace), job(), chat_events()
    log = job_events.EventLog(keys, write_format)
    pipe = redis.pipeline(transaction=False)
    for seq, event in enumerate(stream):
        log.record(pipe, j, seq, [event])
    await pipe.execute()
    elements = await redis.lrange(keys.event_log(j.id), 0, -1)  # type: ignore[misc]
    kinds = [e[:1] for e in elements]
    assert kinds[:2] == [b"o", b"e"]  # who may read it, then the first event whole
    if write_format == 1:
        assert set(kinds[1:]) == {b"e"}
    else:
        assert kinds.count(b"d") >= len(stream) - 3  # all but the whole ones (the first, a finish or usage chunk)
        # Against the same events as `e` elements: 4 bytes or more saved on each (attempt, copy, skip, insert
        # kept; msgpack's array headers and the insert's bin header gone).
        one_hole = [event_deltas.delta(a, b) for a, b in zip(stream, stream[1:])]
        as_e = {len(b"e" + msgspec.msgpack.encode([1, edit])) for edit in one_hole if len(edit) == 3}
        assert max(len(e) for e in elements if e[:1] == b"d") <= max(as_e) - 4
    replies = await read_all(redis, keys, j.id)
    assert events_of(replies) == stream
    assert [(r.attempt, r.seq) for r in replies] == [(1, n) for n in range(len(stream))]


async def test_one_event_bursts_of_a_restarted_attempt_read_after_the_first(redis: Redis, namespace: str) -> None:
    keys, stream = Keys(namespace), chat_events()
    log = job_events.EventLog(keys)
    pipe = redis.pipeline(transaction=False)
    for seq in range(4):
        log.record(pipe, job(), seq, [stream[seq]])
    log.forget(job().id)  # the first worker is gone; the next one starts over from a whole event
    for seq in range(6):
        log.record(pipe, job(attempt=2), seq, [stream[seq]])
    await pipe.execute()
    replies = await read_all(redis, keys, job().id)
    assert events_of(replies, 1) == stream[:4] and events_of(replies, 2) == stream[:6]
    # An edit of the first attempt appended after the second began (a worker thought dead, still writing)
    # is refused as an edit without its event, never applied to the other attempt's event.
    pipe = redis.pipeline(transaction=False)
    log.record(pipe, job(), 0, [stream[0]])
    log.record(pipe, job(), 1, [stream[1]])
    await pipe.execute()
    assert (await redis.lindex(keys.event_log(job().id), -1))[:1] == b"d"  # type: ignore[misc]
    reader = job_events._Reader(job().id)
    elements = await redis.lrange(keys.event_log(job().id), 0, -1)  # type: ignore[misc]
    with pytest.raises(ValueError):
        for element in elements[:-3] + elements[-1:]:  # the zombie's edit without its whole event
            reader.element(element)


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16_383, 16_384, 2**35 + 7])
def test_varints_read_back(n: int) -> None:
    encoded = job_events._varint(n) + b"rest"
    assert job_events._read_varint(encoded, 0) == (n, len(encoded) - 4)
    with pytest.raises(ValueError):
        job_events._read_varint(encoded[:len(encoded) - 5], 0)  # cut short
