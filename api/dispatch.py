"""From a validated request to the client's answer: job, enqueue, wait, respond.

Shared by every endpoint that runs on a worker (chat, completions, embeddings):
the route decodes and routes; this module builds the Job, registers the waiter
*before* the XADD (so no reply can be missed), and turns replies into a JSON
body or an SSE stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar

import msgspec
from fastapi import Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from api import answer_headers, cached, limits, request_ids, sse, unavailable
from api.auth import Principal, credentials
from api.decode import decode_body, read_body
from api.dialects import dialect
from api.metrics import SCOPE_KEY, Facts
from api.state import BrokerState
from broker.errors import BrokerError, InvalidRequest, RequestTimeout
from broker.keys import LANES
from broker.ops import log_context
from broker.queue import async_jobs, job_factory
from broker.queue.jobs import Chunk, Failed, Final, Job
from broker.queue.payloads import Payload, payload_for
from broker.queue.replies import ReplyGap
from broker.queue.streams import enqueue_first
from broker.wire import ChatRequest, CompletionRequest, EmbeddingRequest, json_encoder
from broker.wire.audio import SpeechRequest
from broker.wire.images import ImageRequest
from broker.wire.messages import CountTokensRequest, MessagesRequest
from broker.wire.moderations import ModerationRequest
from broker.wire.rerank import RerankRequest
from broker.wire.responses import ResponsesRequest

log = logging.getLogger(__name__)

P = TypeVar("P", ChatRequest, CompletionRequest, EmbeddingRequest, MessagesRequest, CountTokensRequest,
            ResponsesRequest, ImageRequest, ModerationRequest, SpeechRequest, RerankRequest)


PRIORITY_HEADER = "x-priority"
TIMEOUT_HEADER = "x-request-timeout"
ROUTE_HEADER = "x-llm-broker-route"

# Timings a client sends (X-Request-Timeout, the SDK's x-stainless-read-timeout) count as at least
# this much. Keep-alives and the first-byte hold follow half the SDK's read timeout: a microsecond
# there made the API write keep-alive comments in a busy loop.
MIN_CLIENT_TIMING_S = 1.0


def _timeout_s(state: BrokerState, request: Request, *, streams: bool, asynchronous: bool) -> float:
    """config default, lowered by `X-Request-Timeout` (seconds) and, for a non-streaming request
    the client waits for, by the SDK's own read timeout."""
    server = state.config.server
    timeout = server.async_timeout_s if asynchronous else server.request_timeout_s
    asked = request.headers.get(TIMEOUT_HEADER)
    if asked is not None:
        try:
            value = float(asked)
        except ValueError:
            value = -1.0
        if not 0 < value <= 86_400:
            raise InvalidRequest(f"`X-Request-Timeout` must be a number of seconds in (0, 86400], got {asked!r}.",
                                 param="X-Request-Timeout")
        timeout = min(timeout, max(value, MIN_CLIENT_TIMING_S))
    # The OpenAI SDK announces how long it will wait for a read; for a non-streaming answer that is
    # the whole wait, so no point working longer. A stream only needs a byte that often, which its
    # chunks and keep-alive comments give it: cutting it at that time would break long streams.
    client_timeout = _sdk_read_timeout(request)
    if client_timeout is not None and not streams and not asynchronous:
        timeout = min(timeout, client_timeout)
    return timeout


def _sdk_read_timeout(request: Request) -> float | None:
    with suppress(ValueError):
        value = float(request.headers.get("x-stainless-read-timeout") or "nan")
        if value > 0:  # also false for NaN
            return max(value, MIN_CLIENT_TIMING_S)
    return None


def _lane(request: Request, principal: Principal, *, asynchronous: bool) -> str:
    lane = request.headers.get(PRIORITY_HEADER)
    if lane is None:
        return "batch" if asynchronous else principal.tenant.lane
    lane = lane.strip().lower()
    if lane not in LANES:
        raise InvalidRequest(f"`X-Priority` must be one of {', '.join(LANES)}, got {lane!r}.", param="X-Priority")
    return lane


async def new_job(state: BrokerState, request: Request, principal: Principal, payload: Payload, *,
                  asynchronous: bool = False) -> Job:
    return await job_factory.build(
        state.router, state.redis, state.keys, principal.tenant_name, principal.tenant, principal.key_name, payload,
        lane=_lane(request, principal, asynchronous=asynchronous),
        timeout_s=_timeout_s(state, request, streams=payload.streams, asynchronous=asynchronous),
        # Nobody waits for an async job's replies: they go to a channel no process listens on.
        reply_to=state.keys.replies("async") if asynchronous else state.replies.channel,
        headers=request.headers, async_ttl_s=state.config.server.async_result_ttl_s if asynchronous else 0,
        client_request_id=request_ids.client_request_id(request.headers.get(request_ids.CLIENT_REQUEST_ID)))


_CLIENT_LEFT = BrokerError("The client disconnected before its answer.")


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body is already read, so nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _enqueue(state: BrokerState, job: Job) -> tuple[Job, bytes]:
    """Queue the job on the first candidate that takes it (broker/queue/streams.py `enqueue_first`); if none
    does, or Redis is away, NotQueued refunds its admission."""
    admitting = state.admitting.pop(job.id, None)  # the request's admission, if it rides with the enqueue
    try:
        return await enqueue_first(state.scripts, state.keys, state.config, job, admitting, state.durable)
    except RedisError as exc:
        if admitting is not None and admitting.admission is None:
            raise  # the call that carried the admission: the edge's 503 as for an admission, nothing to refund
        raise _queue_unavailable("queue", exc) from None
    except BrokerError as refused:
        raise limits.NotQueued(refused) from None


# What an inbound protocol does with a job's final body before its client gets it (api/responses_store.py
# stores a Response there, so that it is readable the moment its client sees it complete).
Finalize = Callable[[BrokerState, Request, Principal, Job, bytes], Awaitable[bytes]]
# How an inbound protocol answers a request it runs in the background (an async job it queued).
Accepted = Callable[[BrokerState, Request, Principal, Job], Awaitable[Response]]


async def run(state: BrokerState, request: Request, job: Job, tap: cached.Tap | None = None,
              finalize: Callable[[Job, bytes], Awaitable[bytes]] | None = None) -> Response:
    """Enqueue the job and answer with its result: a JSON body, or an SSE stream (`tap` sees its replies)."""
    waiter = state.replies.open(job.id, abandon=lambda: state.cancel_job(job))
    waiter.tap = tap
    try:
        job, entry_id = await _enqueue(state, job)
        waiter.entry = (state.keys.queue(job.provider, job.lane, job.tenant), entry_id)
    except BaseException:
        state.replies.close(job.id)
        raise
    timeout_message = (
        f"Request timed out after {job.deadline - job.created:g}s waiting for provider {job.provider!r} "
        f"(model {job.model!r}); no worker finished it in time."
    )

    if not job.streams:
        # The client leaving ends the wait at once, as a local failure would (then it is answered 499,
        # which nobody reads): one task per request rather than three (asyncio.wait over the answer's
        # task, which itself waited in another for its timeout, and this one).
        left = False

        def leave(_: object) -> None:
            nonlocal left
            left = True
            waiter.give_up(_CLIENT_LEFT)

        gone = asyncio.get_running_loop().create_task(_client_gone(request))
        gone.add_done_callback(leave)
        try:
            reply = await waiter.next(max(job.deadline - time.time(), 0))
        except ReplyGap as exc:
            raise exc.as_error() from None
        finally:
            gone.remove_done_callback(leave)
            gone.cancel()
            state.replies.close(job.id)
        if left:
            state.cancel_job(job)
            return Response(status_code=499)  # nobody reads it; uvicorn drops it
        match reply:
            case Final(body=body):
                if finalize is not None:
                    body = await finalize(job, body)
                if reply.usage is not None and (facts := request.scope.get(SCOPE_KEY)) is not None:
                    facts.tokens = reply.usage.total_tokens
                # Its worker freed its concurrency slots before this reply left (Final.freed): nothing to release.
                answered = limits.Freed if reply.freed else Response
                return answered(body, media_type="application/json", headers=_served(reply))
            case Failed(error=info):
                raise BrokerError.from_info(info)
            case _:
                raise RequestTimeout(timeout_message)

    hold_s, keepalive_s = stream_timings(state, request)
    try:
        first = await sse.first_reply(waiter, hold_s=hold_s, deadline=job.deadline, timeout_message=timeout_message)
    except BaseException:
        state.replies.close(job.id)
        raise

    def on_close(finished: bool) -> None:
        state.replies.close(job.id)
        if not finished:  # the client may reconnect and resume it (broker/queue/job_events.py)
            # Unless its worker died mid-stream and the job restarted: the client was told `reply_lost`
            # and holds events of the attempt that died, so it cannot resume the new one, whose upstream
            # work would be paid for and thrown away. Cancelled at once, not after the grace.
            grace_s = 0.0 if response.restarted else state.config.server.stream_resume_grace_s
            state.cancel_job(job, grace_s=grace_s)

    response = sse.stream_response(waiter, first, dialect=dialect(job.payload.dialect),
                                   finalize=(lambda body: finalize(job, body)) if finalize else None,
                                   keepalive_s=keepalive_s,
                                   deadline=job.deadline, timeout_message=timeout_message)
    response.on_close(on_close)
    if isinstance(first, Chunk):  # the stream's headers can say what served it only if it has started
        response.headers.update(_served(first))
    return response


def stream_timings(state: BrokerState, request: Request) -> tuple[float, float]:
    """A stream's first-byte hold and keep-alive interval: one waiting (in the queue, or for an identical
    request's answer) must show a byte more often than the client's read timeout."""
    hold_s, keepalive_s = state.config.server.stream_first_byte_hold_s, state.config.server.keepalive_interval_s
    if (read_timeout := _sdk_read_timeout(request)) is not None:
        hold_s, keepalive_s = min(hold_s, read_timeout / 2), min(keepalive_s, read_timeout / 2)
    return hold_s, keepalive_s


def prefers_async(request: Request) -> bool:
    """`Prefer: respond-async` (RFC 7240: comma-separated preferences, each maybe with parameters)."""
    prefer = request.headers.get("prefer")
    return prefer is not None and any(p.split(";")[0].split("=")[0].strip().lower() == "respond-async"
                                      for p in prefer.split(","))


async def submit(state: BrokerState, job: Job, accepted: Callable[[], Awaitable[Response]] | None = None) -> Response:
    """An async job: record it, queue it, and answer 202 with where to poll it (broker/queue/async_jobs.py),
    or as its protocol answers a request it runs in the background (`accepted`)."""
    try:
        view = await async_jobs.submit(state.redis, state.keys, job)
    except RedisError as exc:
        raise _queue_unavailable("job store", exc) from None
    try:
        await _enqueue(state, job)
    except BaseException:
        state.spawn(_forget(state, job.id))
        raise
    if accepted is not None:
        return await accepted()
    return Response(json_encoder.encode(view), status_code=202, media_type="application/json",
                    headers={"location": f"/v1/jobs/{job.id}", "preference-applied": "respond-async"})


def _queue_unavailable(what: str, exc: RedisError) -> limits.NotQueued:
    """Redis failed after admission: the edge's 503, but through NotQueued, which refunds the charges."""
    log.warning("%s unavailable, answering 503: %s: %s", what, type(exc).__name__, exc)
    return limits.NotQueued(unavailable.error(unavailable.QUEUE))


async def _forget(state: BrokerState, job_id: str) -> None:
    with suppress(RedisError):
        await state.redis.delete(state.keys.job(job_id))


def _served(reply: Chunk | Final) -> dict[str, str]:
    """Which deployment answered, after how many upstream calls (failover: broker/routing/failover.py)."""
    if not reply.served_by:
        return {}
    served = {"x-llm-broker-deployment": reply.served_by, "x-llm-broker-attempts": str(reply.calls)}
    if isinstance(reply, Final) and reply.usage is not None and isinstance(reply.usage.cost, float):
        served["x-llm-broker-cost-usd"] = f"{reply.usage.cost:.9f}".rstrip("0").rstrip(".")  # what usage.cost says
    return served


async def _plain(decoded: Any, body: bytes, request: Request, principal: Principal) -> Payload:
    """The payload of an OpenAI request (a type payload_for knows: the routes that use this default)."""
    return payload_for(decoded)


def endpoint(decoder: msgspec.json.Decoder[P],
             to_payload: Callable[[P, bytes, Request, Principal], Awaitable[Payload]] = _plain,
             finalize: Finalize | None = None, accepted: Accepted | None = None,
             ) -> Callable[[Request], Awaitable[Response]]:
    """A route handler for a job-backed endpoint: authenticate, decode, route, run.

    `to_payload` makes the job's payload from the decoded body (and the raw one, and the request's
    headers): an inbound protocol other than OpenAI's brings its own (api/routes/messages.py).
    """

    async def handle(request: Request) -> Response:
        state: BrokerState = request.app.state.broker
        principal = state.auth.authenticate(credentials(request.headers))
        body = await read_body(request, state.config.server.max_body_bytes)
        payload = await to_payload(decode_body(body, decoder), body, request, principal)
        return await respond(state, request, principal, payload, finalize, accepted)

    return handle


async def respond(state: BrokerState, request: Request, principal: Principal, payload: Payload,
                  finalize: Finalize | None = None, accepted: Accepted | None = None) -> Response:
    """Run `payload` for this authenticated request: its job built, admitted, queued (or answered from the
    cache) and answered. For routes that make their payload another way than from a JSON body (an upload)."""
    asynchronous = prefers_async(request) or payload.background
    job = await new_job(state, request, principal, payload, asynchronous=asynchronous)
    # For its metrics and log line (api/metrics.py); a passthrough model is not a label.
    request.scope[SCOPE_KEY] = Facts(job.model if job.model in state.config.models else "passthrough",
                                     principal.tenant_name, principal.key_name, job.lane)
    # As OpenAI does (the SDK shows it as `_request_id`); it is the job id the workers log.
    headers = {request_ids.REQUEST_ID: f"req_{job.id}"}
    log_context.bind(headers[request_ids.REQUEST_ID], job.client_request_id)
    if job.route:  # why another model's deployment served it (or failed it): one of its rules matched
        headers[ROUTE_HEADER] = job.route
    done = (lambda job, body: finalize(state, request, principal, job, body)) if finalize is not None else None
    # A Responses job's worker keeps its answer itself (broker/queue/stored_responses.py): then only a
    # cache hit, which reaches no worker, is finalized here.
    ran = None if getattr(job.payload, "keep", False) else done
    told = (lambda: accepted(state, request, principal, job)) if accepted is not None else None
    answer = (lambda: submit(state, job, told)) if asynchronous else (lambda: run(state, request, job, None, ran))
    # The response cache (api/cached.py), for models it serves; none configured: not even a lookup.
    policy = (state.cache.policy(job.model) if state.cache is not None and not asynchronous and job.payload.cacheable
              else None)
    try:
        if policy is None:
            response = await limits.admitted(state, principal, job, answer, enqueues=not asynchronous)
        else:
            response = await cached.respond(state, request, job, policy, stream_timings(state, request),
                                            lambda tap: limits.admitted(
                                                state, principal, job, lambda: run(state, request, job, tap, ran)),
                                            done)
    except BrokerError as exc:
        exc.headers.update(headers)
        raise
    answer_headers.add(response, headers)
    return response


# The request Structs' JSON schemas, as OpenAPI components: msgspec's own `#/$defs/...` references
# would point at the top of the OpenAPI document, where nothing resolves them (api/app.py merges these).
_BODIES, OPENAPI_COMPONENTS = msgspec.json.schema_components(
    (ChatRequest, CompletionRequest, EmbeddingRequest), ref_template="#/components/schemas/{name}")


def openapi_body(struct: type) -> dict[str, Any]:
    """The OpenAPI request body for a msgspec-decoded route (pydantic never sees these bodies)."""
    schema = _BODIES[(ChatRequest, CompletionRequest, EmbeddingRequest).index(struct)]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
