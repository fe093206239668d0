"""Rate limits and budgets at the door: admit a job, put the x-ratelimit-* headers on whatever answers it,
and free its concurrency slot when the answer is over, unless its job's end already has.

A job its client waits for carries its slots (Job.slots): on one Redis its worker frees them in the call
that publishes its last reply (job_end.lua), before that reply leaves, and the reply says so
(Final.freed / Failed.freed). The API then answers without a release of its own: no round trip between
the answer and its client. Otherwise (a Cluster, a worker of the previous release, the client gone,
a timeout, a refusal, an error raised here, an async job's 202) the API frees the slot itself, as
before: when the JSON body is ready, when the error is raised, or (for SSE) when the stream's response
ends. A second release of a slot already freed removes nothing (ZREM of the job's own member).
The release runs in a task of its own (`BrokerState.spawn`): a client that leaves
cancels the request, and a release awaited inside that cancelled request would
never be sent, leaving the tenant one slot short until the job's deadline. If
this process dies first, the slot expires at the job's deadline
(broker/limits/ratelimit.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from fastapi.responses import Response
from redis.exceptions import RedisError

from api import answer_headers, refusals
from api.auth import Principal
from api.sse import EventStream
from api.state import BrokerState
from broker.errors import BrokerError, RateLimited
from broker.limits.admission import admit, prepare
from broker.limits.ratelimit import Admission, Deferred
from broker.queue.streams import Refused
from broker.queue.jobs import Job

log = logging.getLogger(__name__)


async def admitted(state: BrokerState, principal: Principal, job: Job,
                   respond: Callable[[], Awaitable[Response]], *, enqueues: bool = False) -> Response:
    """Admit `job` (429 if over a limit, charging nothing), then answer it with `respond()`.

    `enqueues`: `respond` queues the job before anything else (api/dispatch.py `run`). On one Redis the
    admission then rides in that enqueue's call (broker/queue/streams.py `enqueue`, admit_enqueue.lua):
    one round trip at the door instead of two, and the same outcomes in the same order.
    """
    pending: Deferred | None = None
    try:
        if enqueues and state.scripts.one_redis:
            call = prepare(state.limiter, state.router.prices, principal.tenant_name, principal.tenant,
                           principal.key, job)
            if isinstance(call, Admission):
                admission: Admission | None = call
            else:
                admission, pending = None, call
                state.admitting[job.id] = call
        else:
            admission = await admit(state.limiter, state.router.prices, principal.tenant_name, principal.tenant,
                                    principal.key, job)  # a Redis error: the edge's 503 (api/unavailable.py)
    except RateLimited as exc:
        _refused(state, job, exc)
        raise
    try:
        response = await respond()
    except Refused as refused:  # the admission that rode with the enqueue: nothing charged, nothing queued
        if isinstance(refused.error, RateLimited):
            _refused(state, job, refused.error)
        raise refused.error from None
    except NotQueued as refused:
        # Nothing will run: the request costs the tenant nothing (its headers still say where it stands).
        admission = _held(admission, pending)
        if state.refusals is not None:
            state.refusals.note(job, refused.error, refusals.cause(refused.error, queued=True))
        if admission is not None:
            await asyncio.shield(state.spawn(_refund(state, admission)))
            refused.error.headers = {**admission.headers, **refused.error.headers}
        raise refused.error from None
    except BaseException as exc:
        # Unknown when the call that carried the admission failed unanswered: its slot lapses at the deadline.
        admission = _held(admission, pending)
        if admission is not None:
            if isinstance(exc, BrokerError):
                exc.headers = {**admission.headers, **exc.headers}
            await _release(state, admission)
        raise
    finally:
        state.admitting.pop(job.id, None)
    admission = _held(admission, pending)
    if admission is None:
        raise RuntimeError(f"job {job.id} was answered without its admission")  # `respond` did not enqueue first
    answer_headers.add(response, admission.headers)
    if isinstance(response, EventStream) and admission.holds_slot:
        stream = response

        def release(_finished: bool) -> None:
            if not stream.freed:  # its job's end freed it already (job_end.lua)
                state.spawn(_release_now(state, admission))

        response.on_close(release)
    elif not isinstance(response, Freed):
        await _release(state, admission)
    return response


class Freed(Response):
    """A job's JSON answer whose worker freed the job's concurrency slots before answering (Final.freed)."""


def _held(admission: Admission | None, pending: Deferred | None) -> Admission | None:
    """The request's admission: made before `respond`, or settled by the enqueue it rode with (if it was)."""
    return admission or (pending.admission if pending else None)


def _refused(state: BrokerState, job: Job, exc: RateLimited) -> None:
    if state.refusals is not None:  # for the console (api/refusals.py): buffered, no round trip here
        state.refusals.note(job, exc, refusals.cause(exc, queued=False))


class NotQueued(Exception):
    """`error` refused the request before its job was queued: the limits' charges are refunded."""

    def __init__(self, error: BrokerError) -> None:
        super().__init__(error.message)
        self.error = error


async def _refund(state: BrokerState, admission: Admission) -> None:
    if not (admission.charges or admission.slots or admission.budget_counters):
        return
    try:
        await state.limiter.refund(admission)
    except RedisError:
        log.warning("could not refund the rate-limit charge of refused request %s", admission.request_id)


async def _release(state: BrokerState, admission: Admission) -> None:
    """Free the slots; waits for it unless the caller is cancelled, which the release outlives."""
    if admission.holds_slot:
        await asyncio.shield(state.spawn(_release_now(state, admission)))


async def _release_now(state: BrokerState, admission: Admission) -> None:
    try:
        await state.limiter.release(admission)
    except RedisError:
        # Not fatal: the slot expires at the job's deadline anyway.
        log.warning("could not release the concurrency slot of %s", admission.request_id)
