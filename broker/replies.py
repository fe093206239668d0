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
(finish.lua stores the terminal reply there in the same atomic step that
publishes it): a job that ended during the gap is answered from it, and one
that ends later is heard on the new subscription. A stream that lost chunks
in the gap fails its sequence check and ends with an explicit error, never a
silently shortened answer. If Redis stays unreachable for
`RECOVERY_GRACE_S`, the waiting requests get a clear 503 instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from broker.errors import BrokerError, Unavailable
from broker.jobs import Chunk, Failed, Reply, reply_decoder

log = logging.getLogger(__name__)


# Sequence number of a Failed the router makes up itself (no worker sent it).
LOCAL_FAILURE = -1
# How long waiting requests wait for a lost reply channel to come back.
RECOVERY_GRACE_S = 5.0


class ReplyGap(Exception):
    """Replies arrived out of sequence: something between worker and API lost a message."""

    def as_error(self) -> BrokerError:
        """What the client is told: the answer cannot be completed here, a retry will be."""
        return Unavailable(f"{self}; please retry", code="reply_lost")


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

    __slots__ = ("job_id", "queue", "_attempt", "_next_seq", "_streamed")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.queue: asyncio.Queue[Reply] = asyncio.Queue()
        self._attempt = 0
        self._next_seq = 0
        self._streamed = False

    async def next(self, timeout_s: float) -> Reply | None:
        """The next reply, or None if none came within timeout_s."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            if self.queue.empty():
                try:
                    reply = await asyncio.wait_for(self.queue.get(),
                                                   max(deadline - asyncio.get_running_loop().time(), 0))
                except asyncio.TimeoutError:
                    return None
            else:
                reply = self.queue.get_nowait()
            if reply.seq == LOCAL_FAILURE:
                return reply
            if reply.attempt < self._attempt:
                continue
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
            return reply


class ReplyRouter:
    def __init__(self, redis: Redis, channel: str, result_key: Callable[[str], str]) -> None:
        self.redis = redis
        self.channel = channel
        self.result_key = result_key
        self._waiters: dict[str, Waiter] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

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

    def open(self, job_id: str) -> Waiter:
        """Register before XADD, so the first reply always finds its waiter."""
        waiter = self._waiters[job_id] = Waiter(job_id)
        return waiter

    def close(self, job_id: str) -> None:
        self._waiters.pop(job_id, None)

    async def _listen(self) -> None:
        lost_at: float | None = None  # when the channel broke, until it is recovered
        failed = False  # the waiting requests were already told (after RECOVERY_GRACE_S)
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if lost_at is not None:
                    await self._recover()
                    log.warning("reply channel %s recovered after %.1f s", self.channel, time.monotonic() - lost_at)
                    lost_at, failed = None, False
                self._ready.set()
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
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
                await asyncio.sleep(0.1 if time.monotonic() - lost_at < 1 else 0.5)

    async def _recover(self) -> None:
        """Hand each waiting job the terminal reply it may have missed (subscribed first, so none is lost)."""
        job_ids = list(self._waiters)
        if not job_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:  # not MGET: result keys span cluster slots
            for job_id in job_ids:
                pipe.get(self.result_key(job_id))
            stored = await pipe.execute()
        for raw in stored:
            if raw is not None:
                self._dispatch(raw)

    def _dispatch(self, data: bytes) -> None:
        try:
            reply = reply_decoder.decode(data)
        except Exception:
            log.warning("undecodable reply on %s dropped", self.channel)
            return
        waiter = self._waiters.get(reply.job_id)
        if waiter is not None:  # None: the client left; its job's replies go nowhere
            waiter.queue.put_nowait(reply)

    def _fail_all(self, message: str) -> None:
        info = Unavailable(message).to_info()
        for job_id, waiter in list(self._waiters.items()):
            waiter.queue.put_nowait(Failed(job_id, 0, LOCAL_FAILURE, info))

