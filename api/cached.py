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

A hit is kept as the route keeps an answer it ran (its finalize step: api/dispatch.py `Finalize`), so
a Responses hit is a stored response like any other, which `previous_response_id` can name.

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
from broker.cache.replay import FROM_EVENTS, hit_answer, hit_events, kept
from broker.errors import RequestTimeout, Unavailable
from broker.money import ledger
from broker.queue.jobs import Chunk, Final, Job, Reply

log = logging.getLogger(__name__)

CACHE_HEADER = "x-llm-broker-cache"
# Rounds of lookup → follow → leader failed → look again, before running without the cache.
MAX_ROUNDS = 3
# A follower polls the flight this often at first, backing off to the most.
POLL_FIRST_S, POLL_MAX_S = 0.01, 0.25

Tap = Callable[[Reply], None]
Runner = Callable[[Tap | None], Awaitable[Response]]
# The route's last step with an answer's final body before its client gets it (api/dispatch.py `Finalize`,
# bound to its request): a hit goes through it too. None for the routes that have none.
Finalizer = Callable[[Job, bytes], Awaitable[bytes]]


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
                  run: Runner, finalize: Finalizer | None = None) -> Response:
    """Answer `job` through the cache; `run(tap)` admits and runs it (its replies shown to `tap`).
    `timings`: a stream's first-byte hold and keep-alive interval (api/dispatch.py `stream_timings`);
    `finalize`: what `run` does with its final body, done to a hit's."""
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
        answer = await _follow(state, job, flight, timings, finalize)
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

    __slots__ = ("job", "limit", "events", "size", "final")

    def __init__(self, job: Job, limit: int) -> None:
        self.job, self.limit = job, limit
        self.events: list[bytes] = []
        self.size = 0
        self.final: Final | None = None

    def take(self, reply: Reply) -> None:
        if isinstance(reply, Chunk) and self.size <= self.limit and self.job.payload.kind in FROM_EVENTS:
            self.events.extend(reply.events)
            self.size += sum(len(event) for event in reply.events)
        elif isinstance(reply, Final):
            self.final = reply

    def body(self) -> bytes | None:
        """The answer's JSON body if it is whole and small enough to keep."""
        if self.final is None or self.size > self.limit:
            return None
        body = kept(self.job.payload.kind, self.final.body, self.events, self.final.usage, streamed=self.job.streams)
        return body if body is not None and len(body) <= self.limit else None


async def _lead(state: BrokerState, job: Job, slot: Slot, policy: Policy,
                flight: asyncio.Future[bytes | None] | None, run: Runner) -> Response:
    """Run the job; when its response is over, store its answer (if whole) and land the flight."""
    assert state.cache is not None
    collector = _Collector(job, state.cache.settings.max_entry_bytes)
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
                  timings: tuple[float, float], finalize: Finalizer | None) -> Response | None:
    """The flight's answer as a hit, or None if it landed without one (then look again)."""
    remaining = job.deadline - time.time()
    if not job.streams:
        try:
            entry = await asyncio.wait_for(asyncio.shield(flight), max(remaining, 0))
        except asyncio.TimeoutError:
            raise RequestTimeout(f"Request timed out after {job.deadline - job.created:g}s waiting for an "
                                 "identical request's answer.") from None
        return None if entry is None else await _hit(state, job, entry, finalize)
    hold_s, keepalive_s = timings
    done, _ = await asyncio.wait({flight}, timeout=max(min(hold_s, remaining), 0))
    if done:
        entry = flight.result()
        return None if entry is None else await _hit(state, job, entry, finalize)
    return _waiting_stream(state, job, flight, keepalive_s, finalize)


def _waiting_stream(state: BrokerState, job: Job, flight: asyncio.Future[bytes | None],
                    keepalive_s: float, finalize: Finalizer | None) -> EventStream:
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
        yield await _replayed(state, job, hit_events(job, entry, now=time.time()), finalize)

    response = EventStream(events())
    response.headers[CACHE_HEADER] = "hit"
    return response


# ---------------------------------------------------------------- hits


async def _replayed(state: BrokerState, job: Job, events: list[bytes], finalize: Finalizer | None) -> bytes:
    framing = dialect(job.payload.dialect)
    body = framing.frame(events)
    if finalize is not None:  # the events without the end marker, as a worker's Final gives them
        body = await finalize(job, body)
    state.spawn(_count_hit(state, job))
    return body + framing.done


async def _hit(state: BrokerState, job: Job, entry: bytes, finalize: Finalizer | None) -> Response | None:
    """The cached answer as this request's own; None if the entry cannot be read (then it runs)."""
    try:
        answer: list[bytes] | bytes = (hit_events(job, entry, now=time.time()) if job.streams
                                       else hit_answer(job, entry, now=time.time()))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("unreadable cache entry ignored: %s", exc)
        return None
    if isinstance(answer, list):
        response = Response(await _replayed(state, job, answer, finalize), media_type="text/event-stream",
                            headers=sse.HEADERS)
    else:
        response = Response(await finalize(job, answer) if finalize is not None else answer,
                            media_type="application/json")
        state.spawn(_count_hit(state, job))
    response.headers.update({CACHE_HEADER: "hit", "x-llm-broker-cost-usd": "0"})
    return response


async def _count_hit(state: BrokerState, job: Job) -> None:
    try:
        await ledger.record_hit(state.redis, state.keys, state.config.usage, job, time.time(), rollups=state.rollups)
    except RedisError as exc:
        log.warning("could not record a cache hit in the usage ledger: %s", exc)
