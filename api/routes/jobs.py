"""Async jobs and resumable streams: GET and DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/events.

An id is the job id of a 202 (`Prefer: respond-async`) or of any response's `x-request-id`
(`req_<job id>`: both forms are accepted). Jobs are tenant-scoped: another tenant's id is a 404,
exactly like one that never existed.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from api import sse, unavailable
from api.auth import credentials
from api.dialects import dialect
from api.state import BrokerState
from broker.errors import (
    BrokerError,
    InvalidRequest,
    ModelNotFound,
    RequestTimeout,
)
from broker.queue import async_jobs, job_events
from broker.queue.jobs import Chunk, Failed, Final
from broker.queue.replies import AttemptRestarted
from broker.wire import json_encoder

router = APIRouter()

_JOB_ID = re.compile(r"^(?:req_)?([0-9a-f]{32})$")


def _job_id(given: str) -> str:
    match = _JOB_ID.match(given)
    if match is None:
        raise _not_found(given)
    return match.group(1)


def _not_found(given: str) -> BrokerError:
    return ModelNotFound(f"No job found with id {given!r}.", param="id", code="job_not_found")


async def _found(state: BrokerState, request: Request, given: str) -> tuple[str, async_jobs.Found]:
    principal = state.auth.authenticate(credentials(request.headers))
    job_id = _job_id(given)
    found = await async_jobs.load(state.redis, state.keys, job_id, principal.tenant_name)
    if found is None:
        raise _not_found(given)
    return job_id, found


@router.get("/v1/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> Response:
    state: BrokerState = request.app.state.broker
    job_id, found = await _found(state, request, job_id)
    view = async_jobs.view(job_id, found.record, found.flags, found.result)
    return Response(json_encoder.encode(view), media_type="application/json")


@router.delete("/v1/jobs/{job_id}")
async def cancel_job(request: Request, job_id: str) -> Response:
    state: BrokerState = request.app.state.broker
    job_id, found = await _found(state, request, job_id)
    view = await async_jobs.cancel_job(state.redis, state.keys, job_id, found)
    return Response(json_encoder.encode(view), media_type="application/json")


@router.get("/v1/jobs/{job_id}/events")
async def job_events_stream(request: Request, job_id: str) -> Response:
    """The job's SSE events after `Last-Event-ID` (all of them without it), then the live ones."""
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    given, job_id = job_id, _job_id(job_id)
    try:
        after = job_events.parse_event_id(request.headers.get("last-event-id"))
    except ValueError:
        raise InvalidRequest("`Last-Event-ID` must be the id of an event of this stream, as `<attempt>.<index>`.",
                             param="Last-Event-ID") from None
    found = await async_jobs.load(state.redis, state.keys, job_id, principal.tenant_name)
    origin = await job_events.origin(state.redis, state.keys, job_id) if found is None else None
    if found is not None:
        if not found.record.streams:
            raise InvalidRequest(f"Job {given!r} is not a stream: its result is at GET /v1/jobs/{job_id}.",
                                 param="id", code="not_a_stream")
        deadline, providers, owned = found.record.deadline, found.record.providers, False
        framing = dialect(found.record.dialect)
    elif origin is not None and origin.tenant == principal.tenant_name:
        # A live request's stream: if this reader leaves too, the job is cancelled after the grace.
        deadline, providers, owned = origin.deadline, origin.providers, True
        framing = dialect(origin.dialect)
    else:
        raise _not_found(given)
    if owned:
        await job_events.attach(state.redis, state.keys, job_id, deadline)
    def ended() -> None:
        response.finished = True

    def restarted() -> None:
        response.restarted = True

    response = sse.EventStream(replay(state, job_id, after, deadline, ended, framing, restarted))

    def on_close(finished: bool) -> None:
        if owned:
            state.spawn(_detach(state, job_id, providers, deadline, finished, response.restarted))

    response.on_close(on_close)
    response.headers["x-request-id"] = f"req_{job_id}"
    return response


async def _detach(state: BrokerState, job_id: str, providers: list[str], deadline: float, finished: bool,
                  restarted: bool) -> None:
    try:
        if await job_events.detach(state.redis, state.keys, job_id) <= 0 and not finished:
            # A reader that met a restarted attempt cannot come back for it (api/dispatch.py `run`): no grace.
            grace_s = 0.0 if restarted else state.config.server.stream_resume_grace_s
            await job_events.cancel_unless_resumed(state.redis, state.keys, providers, job_id, deadline, grace_s)
    except RedisError:  # the job still ends at its deadline
        pass


async def replay(state: BrokerState, job_id: str, after: tuple[int, int] | None, deadline: float,
                  ended: Callable[[], None], framing: sse.Dialect,
                  restarted: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
    """Replay from the job's event log, resuming after `after` = (attempt, index), in the stream's own
    dialect (an Anthropic client resumes an Anthropic stream)."""
    keepalive_s = state.config.server.keepalive_interval_s
    attempt, index = (after[0], after[1] + 1) if after else (0, 0)  # index: of the next event to send
    sent = after is not None  # whether the client holds events of `attempt`
    seen = 0  # events of `attempt` read from the log so far
    try:
        async for reply in job_events.replies(state.readers, job_id, state.keys, wait_s=keepalive_s,
                                              deadline=deadline):
            match reply:
                case None:
                    if time.time() > deadline + job_events.EXPIRY_MARGIN_S:
                        yield framing.error_event(RequestTimeout("The job's stream ended without its last event."))
                        return
                    yield framing.keepalive_after_ids
                    continue
                case Chunk():
                    if reply.attempt < attempt:
                        continue  # an older attempt's, superseded
                    if reply.attempt > attempt:
                        if sent:
                            error = AttemptRestarted("the job was restarted after a worker failure and its "
                                                     "stream cannot be resumed").as_error()
                            if restarted is not None:
                                restarted()
                            yield framing.error_event(error)
                            return
                        attempt, seen = reply.attempt, 0
                    fresh = reply.events[max(index - seen, 0):]
                    if fresh:
                        yield framing.frame_with_ids(fresh, attempt, seen + len(reply.events) - len(fresh))
                        sent = True
                    seen += len(reply.events)
                    index = max(index, seen)
                case Final(body=body):
                    ended()
                    if body:  # a stream's last events, held back by the worker (api/sse.py)
                        yield body
                    if framing.done:
                        yield framing.done
                    return
                case Failed(error=info):
                    ended()
                    yield framing.error_event(BrokerError.from_info(info))
                    return
    except RedisError:  # past the first byte: the 503 the route would have answered, as an event
        yield framing.error_event(unavailable.for_path(f"/v1/jobs/{job_id}/events"))
