"""From a validated request to the client's answer: job, enqueue, wait, respond.

Shared by every endpoint that runs on a worker (chat, completions, embeddings):
the route decodes and routes; this module builds the Job, registers the waiter
*before* the XADD (so no reply can be missed), and turns replies into a JSON
body or an SSE stream.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from fastapi import Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from api import sse
from api.auth import Principal
from api.decode import decode_body
from api.state import BrokerState
from broker.capabilities import Request as Payload
from broker.errors import BrokerError, RequestTimeout, Unavailable, UpstreamError
from broker.jobs import Failed, Final, Job
from broker.replies import ReplyGap
from broker.streams import enqueue
from broker.wire import ChatRequest, CompletionRequest, EmbeddingRequest


def _deadline(state: BrokerState, request: Request, now: float) -> float:
    timeout = state.config.server.request_timeout_s
    # The OpenAI SDK announces how long it will wait; no point working longer.
    client_timeout = request.headers.get("x-stainless-read-timeout")
    if client_timeout:
        try:
            timeout = min(timeout, float(client_timeout))
        except ValueError:
            pass
    return now + timeout


def new_job(state: BrokerState, request: Request, principal: Principal, payload: Payload) -> Job:
    deployment = state.router.resolve(principal.tenant, payload.model, payload)
    now = time.time()
    return Job(
        id=uuid.uuid4().hex,
        tenant=principal.tenant_name,
        model=payload.model,
        provider=deployment.provider,
        upstream_model=deployment.model,
        reply_to=state.replies.channel,
        created=now,
        deadline=_deadline(state, request, now),
        request=payload if isinstance(payload, ChatRequest) else None,
        completion=payload if isinstance(payload, CompletionRequest) else None,
        embedding=payload if isinstance(payload, EmbeddingRequest) else None,
    )


async def run(state: BrokerState, job: Job) -> Response:
    """Enqueue the job and answer with its result: a JSON body, or an SSE stream."""
    timeout_message = (
        f"Request timed out after {job.deadline - job.created:g}s waiting for provider {job.provider!r} "
        f"(model {job.model!r}); no worker finished it in time."
    )
    waiter = state.replies.open(job.id)
    try:
        await enqueue(state.redis, state.keys, job)
    except RedisError:
        state.replies.close(job.id)
        raise Unavailable("The broker's queue is unavailable; please retry shortly.", retry_after_s=1) from None

    if not job.streams:
        try:
            reply = await waiter.next(max(job.deadline - time.time(), 0))
        except ReplyGap as exc:
            raise UpstreamError(f"reply stream broken: {exc}") from None
        finally:
            state.replies.close(job.id)
        match reply:
            case Final(body=body):
                return Response(body, media_type="application/json")
            case Failed(error=info):
                raise BrokerError.from_info(info)
            case _:
                raise RequestTimeout(timeout_message)

    try:
        first = await sse.first_reply(waiter, hold_s=state.config.server.stream_first_byte_hold_s,
                                      deadline=job.deadline, timeout_message=timeout_message)
    except BaseException:
        state.replies.close(job.id)
        raise
    return sse.stream_response(
        waiter,
        first,
        keepalive_s=state.config.server.keepalive_interval_s,
        deadline=job.deadline,
        timeout_message=timeout_message,
        on_close=lambda: state.replies.close(job.id),
    )


P = TypeVar("P", ChatRequest, CompletionRequest, EmbeddingRequest)


def endpoint(decoder: msgspec.json.Decoder[P]) -> Callable[[Request], Awaitable[Response]]:
    """A route handler for a job-backed endpoint: authenticate, decode, route, run."""

    async def handle(request: Request) -> Response:
        state: BrokerState = request.app.state.broker
        principal = state.auth.authenticate(request.headers.get("authorization"))
        payload = decode_body(await request.body(), decoder)
        return await run(state, new_job(state, request, principal, payload))

    return handle


def openapi_body(struct: type) -> dict[str, Any]:
    """The OpenAPI request body for a msgspec-decoded route (pydantic never sees these bodies)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": msgspec.json.schema(struct)}}}}
