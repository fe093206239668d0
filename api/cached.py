"""The response cache at the door (broker/cache/exact.py): a hit answers at once, a miss runs its job and
stores the answer, and identical requests in flight share one upstream call.

Single flight, in two layers. Across processes, the first identical request in takes a flight key
in Redis (cache_lookup.lua) and leads; the others follow: they poll the flight and the entry with a
backoff until the leader stores its answer or lands without one. Within a process, identical
requests share one asyncio future per entry key: one request does the Redis work (lookup, lead or
poll) and the others wait on the future, so 50 identical requests in one API process cost one
lookup and get the leader's answer straight from memory.

A leader that ends without an answer to store (it failed, its client left, a limit refused it) lands
its flight; its followers look again and one of them leads. A streamed follower still waiting after
the first-byte hold has started its 200 with keep-alives, so if its leader fails then, it ends with
a retryable error event instead (the status can no longer change).

Hits, followers included, bypass rate limits and budgets: they reach no upstream, and a hit costs
the broker about what refusing it would (one Redis call). They are counted in the usage ledger as
requests of the pseudo-deployment `cache`, with no tokens and no cost (`cache_hits`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

import msgspec
from fastapi import Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from api import sse
from api.dialects import dialect
from api.sse import EventStream
from api.state import BrokerState
from broker.cache.exact import Policy, Slot, deterministic
from broker.cache.replay import assemble, hit_body, replay
from broker.errors import RequestTimeout, Unavailable
from broker.money import ledger
from broker.queue.jobs import Chunk, Final, Job, Reply
from broker.queue.payloads import Kind

log = logging.getLogger(__name__)

CACHE_HEADER = "x-llm-broker-cache"
# Rounds of lookup → follow → leader failed → look again, before running without the cache.
MAX_ROUNDS = 3
# A follower polls the flight this often at first, backing off to the most.
POLL_FIRST_S, POLL_MAX_S = 0.01, 0.25

Tap = Callable[[Reply], None]
Runner = Callable[[Tap | None], Awaitable[Response]]


class Wants(NamedTuple):
    """What the client's `Cache-Control` allows: `no-cache` skips the lookup, `no-store` the storing."""

    lookup: bool
    store: bool


def wants(request: Request) -> Wants:
    header = request.headers.get("cache-control")
    if header is None:
        return Wants(True, True)
    directives = {part.split("=")[0].strip().lower() for part in header.split(",")}
    return Wants("no-cache" not in directives, "no-store" not in directives)


async def respond(state: BrokerState, request: Request, job: Job, policy: Policy, timings: tuple[float, float],
                  run: Runner) -> Response:
    """Answer `job` through the cache; `run(tap)` admits and runs it (its replies shown to `tap`).
    `timings`: a stream's first-byte hold and keep-alive interval (api/dispatch.py `stream_timings`)."""
    assert state.cache is not None
    want = wants(request)
    if not (want.lookup or want.store) or (policy.deterministic_only and not deterministic(job.request)):
        return _miss(await run(None))
    slot = state.cache.slot(policy, job)
    for _ in range(MAX_ROUNDS if want.lookup else 0):
        if time.time() >= job.deadline:
            raise RequestTimeout(f"Request timed out after {job.deadline - job.created:g}s waiting for an "
                                 "identical request's answer.")
        flight = state.flights.get(slot.entry)
        if flight is None:
            flight = state.flights[slot.entry] = asyncio.get_running_loop().create_future()
            try:
                found = await state.cache.lookup(slot, lead=want.store, job=job)
            except BaseException as exc:
                _resolve(state, slot, flight, None)
                if isinstance(exc, RedisError):  # the cache is a shortcut: without it, run as if missed
                    log.warning("response cache unavailable: %s: %s", type(exc).__name__, exc)
                    return _miss(await run(None))
                raise
            match found.outcome:
                case "hit":
                    _resolve(state, slot, flight, found.entry)
                case "lead":
                    return await _lead(state, job, slot, policy, flight, run)
                case "follow":  # another process leads: this one polls for everyone here
                    state.spawn(_poll(state, slot, job.deadline, flight))
                case "alone":
                    _resolve(state, slot, flight, None)
                    return _miss(await run(None))
        answer = await _follow(state, job, flight, timings)
        if answer is not None:
            return answer
    # `no-cache` (or leaders that kept failing): run, and store the answer unless told not to.
    return await _lead(state, job, slot, policy, None, run) if want.store else _miss(await run(None))


def _miss(response: Response) -> Response:
    response.headers[CACHE_HEADER] = "miss"
    return response


def _resolve(state: BrokerState, slot: Slot, flight: asyncio.Future[bytes | None], entry: bytes | None) -> None:
    if not flight.done():
        flight.set_result(entry)
    if state.flights.get(slot.entry) is flight:
        del state.flights[slot.entry]


# ---------------------------------------------------------------- leading


class _Collector:
    """A leader's replies, kept until its answer is whole (streams: its events, up to a bound)."""

    __slots__ = ("kind", "limit", "events", "size", "final")

    def __init__(self, kind: Kind, limit: int) -> None:
        self.kind, self.limit = kind, limit
        self.events: list[bytes] = []
        self.size = 0
        self.final: Final | None = None

    def take(self, reply: Reply) -> None:
        if isinstance(reply, Chunk) and self.size <= self.limit:
            self.events.extend(reply.events)
            self.size += sum(len(event) for event in reply.events)
        elif isinstance(reply, Final):
            self.final = reply

    def body(self) -> bytes | None:
        """The answer's JSON body if it is whole and small enough to keep."""
        if self.final is None or self.size > self.limit:
            return None
        body = self.final.body or assemble(self.kind, self.events, self.final.usage)
        return body if body is not None and len(body) <= self.limit else None


async def _lead(state: BrokerState, job: Job, slot: Slot, policy: Policy,
                flight: asyncio.Future[bytes | None] | None, run: Runner) -> Response:
    """Run the job; when its response is over, store its answer (if whole) and land the flight."""
    assert state.cache is not None
    collector = _Collector(job.payload.kind, state.cache.settings.max_entry_bytes)
    settled = False

    def settle(_finished: bool = True) -> None:
        nonlocal settled
        if not settled:
            settled = True
            state.spawn(_settle(state, job, slot, policy, flight, collector.body()))

    try:
        response = await run(collector.take)
    except BaseException:
        settle()
        raise
    if isinstance(response, EventStream):
        response.on_close(settle)
    else:
        settle()
    return _miss(response)


async def _settle(state: BrokerState, job: Job, slot: Slot, policy: Policy,
                  flight: asyncio.Future[bytes | None] | None, body: bytes | None) -> None:
    assert state.cache is not None
    leader = job.id if flight is not None else ""
    try:
        if body is not None:
            await state.cache.store(slot, body, policy, leader)
        elif leader:
            await state.cache.land(slot, leader)
    except RedisError as exc:  # the flight key expires at the leader's deadline anyway
        log.warning("could not store a cached answer: %s: %s", type(exc).__name__, exc)
    finally:
        if flight is not None:
            _resolve(state, slot, flight, body)  # followers here get the answer even if Redis did not


# ---------------------------------------------------------------- following


async def _poll(state: BrokerState, slot: Slot, deadline: float, flight: asyncio.Future[bytes | None]) -> None:
    """Watch another process's flight until it lands, for every follower in this one."""
    assert state.cache is not None
    entry, delay = None, POLL_FIRST_S
    try:
        while time.time() < deadline:
            flying, entry = await state.cache.poll(slot)
            if entry is not None or not flying:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_S)
    except RedisError as exc:
        log.warning("response cache unavailable while following a request: %s", exc)
    finally:
        _resolve(state, slot, flight, entry)


async def _follow(state: BrokerState, job: Job, flight: asyncio.Future[bytes | None],
                  timings: tuple[float, float]) -> Response | None:
    """The flight's answer as a hit, or None if it landed without one (then look again)."""
    remaining = job.deadline - time.time()
    if not job.streams:
        try:
            entry = await asyncio.wait_for(asyncio.shield(flight), max(remaining, 0))
        except asyncio.TimeoutError:
            raise RequestTimeout(f"Request timed out after {job.deadline - job.created:g}s waiting for an "
                                 "identical request's answer.") from None
        return None if entry is None else _hit(state, job, entry)
    hold_s, keepalive_s = timings
    done, _ = await asyncio.wait({flight}, timeout=max(min(hold_s, remaining), 0))
    if done:
        entry = flight.result()
        return None if entry is None else _hit(state, job, entry)
    return _waiting_stream(state, job, flight, keepalive_s)


def _waiting_stream(state: BrokerState, job: Job, flight: asyncio.Future[bytes | None],
                    keepalive_s: float) -> EventStream:
    """A streamed follower whose leader is slow: keep-alives until its answer, then the replay."""

    async def events() -> AsyncIterator[bytes]:
        while not flight.done():  # the hold is over: a byte at once, as a queued stream sends (api/sse.py)
            remaining = job.deadline - time.time()
            if remaining <= 0:
                yield sse.error_event(RequestTimeout(f"Request timed out after {job.deadline - job.created:g}s "
                                                     "waiting for an identical request's answer."))
                return
            yield sse.KEEPALIVE
            await asyncio.wait({flight}, timeout=min(keepalive_s, remaining))
        entry = flight.result()
        if entry is None:
            yield sse.error_event(Unavailable("The identical request this one was waiting for failed; please "
                                              "retry.", code="cache_flight_failed"))
            return
        yield _replayed(state, job, entry)

    response = EventStream(events())
    response.headers[CACHE_HEADER] = "hit"
    return response


# ---------------------------------------------------------------- hits


def _answer_id(job: Job) -> str:
    return f"{job.payload.answer_prefix}{job.id}"


def _replayed(state: BrokerState, job: Job, entry: bytes) -> bytes:
    events = replay(job.payload.kind, entry, _answer_id(job), wants_usage=job.payload.wants_usage_chunk)
    state.spawn(_count_hit(state, job))
    framing = dialect(job.payload.dialect)
    return framing.frame(events) + framing.done


def _hit(state: BrokerState, job: Job, entry: bytes) -> Response | None:
    """The cached answer as this request's own; None if the entry cannot be read (then it runs)."""
    try:
        if job.streams:
            response = Response(_replayed(state, job, entry), media_type="text/event-stream", headers=sse.HEADERS)
        else:
            response = Response(hit_body(job.payload.kind, entry, _answer_id(job)),
                                media_type="application/json")
            state.spawn(_count_hit(state, job))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("unreadable cache entry ignored: %s", exc)
        return None
    response.headers.update({CACHE_HEADER: "hit", "x-llm-broker-cost-usd": "0"})
    return response


async def _count_hit(state: BrokerState, job: Job) -> None:
    try:
        await ledger.record_hit(state.redis, state.keys, state.config.usage, job, time.time())
    except RedisError as exc:
        log.warning("could not record a cache hit in the usage ledger: %s", exc)
