"""One pub/sub connection per API process, fanned out in-process by job id.

Thousands of open requests must not mean thousands of Redis connections, so
each API process subscribes once, to its own channel (`Keys.replies`), and
every job it enqueues names that channel in `Job.reply_to`. The listener task
decodes each reply and hands it to the waiting request's queue.

Ordering guarantee relied on: Redis delivers messages published on one
connection to one subscriber in order, and the subscription exists before any
job is enqueued (it is made at start-up), so no reply can be missed.

If the pub/sub connection itself breaks, messages published meanwhile are
gone. The router resubscribes and then reads each waiting job's result key
(the worker stores the terminal reply there in the round trip that publishes
it, before finish.lua deletes the entry): a job that ended during the gap is answered from it, and one
that ends later is heard on the new subscription. A stream that lost chunks
in the gap fails its sequence check and ends with an explicit error, never a
silently shortened answer. If Redis stays unreachable for
`RECOVERY_GRACE_S`, the waiting requests get a clear 503 instead of hanging.
A Redis that comes back *without its data* (no AOF, a failover to an empty
replica) is noticed the same way: a waiting job with neither its stream entry
nor a result was lost, and its client gets a retryable 503 at once instead of
waiting out its deadline.

Whenever the router gives up on a job for its client (Redis gone too long, job
lost, a reader too slow), it calls the waiter's `abandon` so the job is
cancelled and no tokens are spent on an answer nobody will read. While Redis
is down that waits for the reconnection, before the workers pull again.

Pub/sub gives no backpressure: a client reading slower than its job produces
would make its queue grow without limit. Each waiter holds at most
`max_buffered_bytes` of stream events; past that its stream ends with an
explicit error and its job is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from broker.errors import BrokerError, InvalidRequest, Unavailable
from broker.queue.jobs import Chunk, Failed, Reply, reply_decoder
from broker.store.connection import subscriber

log = logging.getLogger(__name__)


# Sequence number of a Failed the router makes up itself (no worker sent it).
LOCAL_FAILURE = -1
# How long waiting requests wait for a lost reply channel to come back.
RECOVERY_GRACE_S = 5.0
LOST_RECHECK_S = 0.25  # see _recover
# A 503 that says "please retry" says when (RFC 9110 §10.2.3): the Redis that lost the job or reply
# answers again, so a retry can go almost at once, as the API's other Redis 503s say (api/unavailable.py).
RETRY_AFTER_S = 1.0


class ReplyGap(Exception):
    """Replies arrived out of sequence: something between worker and API lost a message."""

    def as_error(self) -> BrokerError:
        """What the client is told: the answer cannot be completed here, a retry will be."""
        return Unavailable(f"{self}; please retry", code="reply_lost", retry_after_s=RETRY_AFTER_S)


class AttemptRestarted(ReplyGap):
    """A retried job started over after part of an earlier attempt's stream reached the client."""


class Waiter:
    """The replies of one job, in order; checks attempts and sequence numbers as they are taken.

    A job reclaimed from a dead worker runs again with attempt + 1 and its own
    sequence from 0. Before any chunk reached the client the new attempt simply
    takes over; after, splicing two attempts would duplicate or garble output,
    so the stream ends with an explicit error instead (`AttemptRestarted`).
    Replies of an older attempt (a presumed-dead worker that was only slow) are dropped.
    """

    __slots__ = ("job_id", "queue", "abandon", "entry", "buffered", "given_up", "tap", "_attempt", "_next_seq",
                 "_streamed")

    def __init__(self, job_id: str, abandon: Callable[[], None]) -> None:
        self.job_id = job_id
        self.queue: asyncio.Queue[Reply] = asyncio.Queue()
        self.abandon = abandon  # cancels the job: called when the router gives up on it
        self.entry: tuple[str, bytes] | None = None  # (stream, entry id) once enqueued
        self.buffered = 0  # bytes of stream events queued and not yet taken
        self.given_up = False  # a local failure was queued: later replies are dropped
        self.tap: Callable[[Reply], None] | None = None  # sees each reply taken in order (the response cache)
        self._attempt = 0
        self._next_seq = 0
        self._streamed = False

    def give_up(self, error: BrokerError) -> None:
        """End this job's replies with `error` (queued after nothing: what was buffered is dropped)."""
        if self.given_up:
            return
        self.given_up = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.buffered = 0
        self.queue.put_nowait(Failed(self.job_id, 0, LOCAL_FAILURE, error.to_info()))

    async def next(self, timeout_s: float) -> Reply | None:
        """The next reply, or None if none came within timeout_s."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            if self.queue.empty():
                # A timeout scope, not wait_for: Python 3.11's wait_for wraps the get in a task of its
                # own, on every reply of every request.
                try:
                    async with asyncio.timeout_at(deadline):
                        reply = await self.queue.get()
                except TimeoutError:
                    return None
            else:
                reply = self.queue.get_nowait()
            if (taken := self._take(reply)) is not None:
                return taken

    def ready(self) -> Reply | None:
        """The next reply if it has arrived already (checked as `next` checks it), else None: never waits."""
        while not self.queue.empty():
            if (taken := self._take(self.queue.get_nowait())) is not None:
                return taken
        return None

    def _take(self, reply: Reply) -> Reply | None:
        """`reply` taken in order, or None if it is to be dropped (an older attempt's)."""
        if isinstance(reply, Chunk):
            self.buffered -= event_bytes(reply)
        if reply.seq == LOCAL_FAILURE:
            return reply
        if reply.attempt < self._attempt:
            return None
        if reply.attempt > self._attempt:
            if self._streamed:
                raise AttemptRestarted(
                    "the worker running this request stopped mid-stream and the request was retried "
                    "from the start; the output already sent cannot be continued")
            self._attempt, self._next_seq = reply.attempt, 0
        if reply.seq != self._next_seq:
            raise ReplyGap(f"part of the answer was lost between the worker and the API (expected reply "
                           f"{self._next_seq}, got {reply.seq}): its Redis connection broke")
        self._next_seq += 1
        if isinstance(reply, Chunk):
            self._streamed = True
        if self.tap is not None:
            self.tap(reply)
        return reply


def event_bytes(chunk: Chunk) -> int:
    return sum(len(event) for event in chunk.events)


def _too_slow(limit: int) -> BrokerError:
    return InvalidRequest(f"The client read this stream too slowly: more than {limit:,} bytes of it were waiting "
                          "to be sent, so the stream was ended and its request cancelled.", code="client_too_slow")


class ReplyRouter:
    def __init__(self, redis: Redis, channel: str, result_key: Callable[[str], str], *,
                 max_buffered_bytes: int) -> None:
        self.redis = redis
        self.channel = channel
        self.result_key = result_key
        self.max_buffered_bytes = max_buffered_bytes
        self._waiters: dict[str, Waiter] = {}
        # Jobs given up while Redis was unreachable: cancelled as soon as it answers again.
        self._to_abandon: list[Waiter] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        # Other channels this process listens on, sharing the one connection (`also`).
        self._hooks: dict[bytes, Callable[[bytes], None]] = {}

    def also(self, channel: str, hook: Callable[[bytes], None]) -> None:
        """Hand each message on `channel` to `hook` too (before `start`). A hook cannot count on every
        message: those published while the connection was broken are gone."""
        self._hooks[channel.encode()] = hook

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="reply-router")
        await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def open(self, job_id: str, abandon: Callable[[], None]) -> Waiter:
        """Register before XADD, so the first reply always finds its waiter.

        `abandon` cancels the job; the router calls it when it gives up on the job for its client.
        """
        waiter = self._waiters[job_id] = Waiter(job_id, abandon)
        return waiter

    def close(self, job_id: str) -> None:
        self._waiters.pop(job_id, None)

    async def _listen(self) -> None:
        lost_at: float | None = None  # when the channel broke, until it is recovered
        failed = False  # the waiting requests were already told (after RECOVERY_GRACE_S)
        while True:
            pubsub = subscriber(self.redis).pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, *self._hooks)
                self._abandon_given_up()
                if lost_at is not None:
                    await self._recover()
                    log.warning("reply channel %s recovered after %.1f s", self.channel, time.monotonic() - lost_at)
                    lost_at, failed = None, False
                self._ready.set()
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    hook = self._hooks.get(message["channel"])
                    if hook is not None:
                        hook(message["data"])
                    else:
                        self._dispatch(message["data"])
            except asyncio.CancelledError:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except Exception as exc:  # connection lost: resubscribe, then recover what the gap hid
                if lost_at is None:
                    log.warning("reply channel %s interrupted: %s", self.channel, exc)
                    lost_at = time.monotonic()
                elif not failed and time.monotonic() - lost_at > RECOVERY_GRACE_S:
                    self._fail_all("lost the connection to Redis while waiting for the reply")
                    failed = True
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except Exception:
                    pass
                # Often: once Redis is back, the requests failed meanwhile must have their jobs cancelled
                # before workers pull again (they pause a second after an outage for this).
                await asyncio.sleep(0.1)

    async def _recover(self) -> None:
        """After a reconnection: hand each waiting job the terminal reply it may have missed (subscribed
        first, so none is lost), and fail at once the jobs Redis no longer has."""
        waiters = list(self._waiters.values())
        if not waiters:
            return
        async with self.redis.pipeline(transaction=False) as pipe:  # not MGET: result keys span cluster slots
            for waiter in waiters:
                # The entry first: the worker stores the result before finish.lua deletes the entry,
                # so a job that ends between the two reads is still seen by one of them.
                if waiter.entry is not None:
                    stream, entry_id = waiter.entry
                    pipe.xrange(stream, entry_id, entry_id, count=1)
                pipe.get(self.result_key(waiter.job_id))
            found: list[Any] = await pipe.execute()
        missing = []
        for waiter in waiters:
            entry = found.pop(0) if waiter.entry is not None else None
            result = found.pop(0)
            if result is not None:
                self._dispatch(result)
            elif waiter.entry is not None and not entry:
                missing.append(waiter)
        if missing:
            # Under Redis Cluster the result and the entry live on different nodes, so a job ending
            # right now may show neither for an instant: look once more before calling it lost.
            await asyncio.sleep(LOST_RECHECK_S)
            async with self.redis.pipeline(transaction=False) as pipe:
                for waiter in missing:
                    pipe.get(self.result_key(waiter.job_id))
                results: list[Any] = await pipe.execute()
        lost = 0
        for waiter, result in zip(missing, results if missing else []):
            if result is not None:
                self._dispatch(result)
                continue
            lost += 1
            waiter.give_up(Unavailable("Redis lost this request's job (it restarted without its data); "
                                       "please retry", code="job_lost", retry_after_s=RETRY_AFTER_S))
            waiter.abandon()  # a worker may still hold it in memory
        if lost:
            log.error("Redis lost %d waiting jobs (restarted without its data); their clients were told to retry",
                      lost)

    def _dispatch(self, data: bytes) -> None:
        try:
            reply = reply_decoder.decode(data)
        except Exception:
            log.warning("undecodable reply on %s dropped", self.channel)
            return
        waiter = self._waiters.get(reply.job_id)
        if waiter is None or waiter.given_up:  # the client left, or was told why not: nobody reads it
            return
        if isinstance(reply, Chunk):
            waiter.buffered += event_bytes(reply)
            if waiter.buffered > self.max_buffered_bytes:
                waiter.give_up(_too_slow(self.max_buffered_bytes))
                waiter.abandon()
                return
        waiter.queue.put_nowait(reply)

    def _fail_all(self, message: str) -> None:
        error = Unavailable(message)
        for waiter in list(self._waiters.values()):
            if not waiter.given_up:
                waiter.give_up(error)
                self._to_abandon.append(waiter)  # cancelled once Redis answers again

    def _abandon_given_up(self) -> None:
        """Cancel the jobs whose clients were failed while Redis was away, before workers can run them."""
        waiters, self._to_abandon = self._to_abandon, []
        for waiter in waiters:
            waiter.abandon()
