"""Rate limits and budgets at the door: admit a job, put the x-ratelimit-* headers on whatever answers it,
and free its concurrency slot when the answer is over.

The slot is freed when the JSON body is ready, when the error is raised, or (for
SSE) when the stream's response ends: finished, failed or the client gone. The
release runs in a task of its own (`BrokerState.spawn`): a client that leaves
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

from api import refusals
from api.auth import Principal
from api.sse import EventStream
from api.state import BrokerState
from broker.errors import BrokerError, RateLimited
from broker.limits.admission import admit
from broker.limits.ratelimit import Admission
from broker.queue.jobs import Job

log = logging.getLogger(__name__)


async def admitted(state: BrokerState, principal: Principal, job: Job,
                   respond: Callable[[], Awaitable[Response]]) -> Response:
    """Admit `job` (429 if over a limit, charging nothing), then answer it with `respond()`."""
    try:
        admission = await admit(state.limiter, state.router.prices, principal.tenant_name, principal.tenant,
                                principal.key, job)  # a Redis error: the edge's 503 (api/unavailable.py)
    except RateLimited as exc:
        if state.refusals is not None:  # for the console (api/refusals.py): buffered, no round trip here
            state.refusals.note(job, exc, refusals.cause(exc, queued=False))
        raise
    try:
        response = await respond()
    except NotQueued as refused:
        # Nothing will run: the request costs the tenant nothing (its headers still say where it stands).
        if state.refusals is not None:
            state.refusals.note(job, refused.error, refusals.cause(refused.error, queued=True))
        await asyncio.shield(state.spawn(_refund(state, admission)))
        refused.error.headers = {**admission.headers, **refused.error.headers}
        raise refused.error from None
    except BaseException as exc:
        if isinstance(exc, BrokerError):
            exc.headers = {**admission.headers, **exc.headers}
        await _release(state, admission)
        raise
    response.headers.update(admission.headers)
    if isinstance(response, EventStream) and admission.holds_slot:
        def release(_finished: bool) -> None:
            state.spawn(_release_now(state, admission))

        response.on_close(release)
    else:
        await _release(state, admission)
    return response


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
