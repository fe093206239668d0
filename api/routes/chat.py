"""POST /v1/chat/completions: authenticate, decode, enqueue, wait for the replies."""

from __future__ import annotations

import time
import uuid

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from api import sse
from api.decode import decode_body
from api.state import BrokerState
from broker.errors import BrokerError, RequestTimeout, Unavailable, UpstreamError
from broker.jobs import Failed, Final, Job
from broker.replies import ReplyGap
from broker.streams import enqueue
from broker.wire import ChatRequest, chat_request_decoder

router = APIRouter()

# The OpenAPI document shows the real body schema even though msgspec, not
# pydantic, decodes it (msgspec is several times faster on the hot path).
_schema = msgspec.json.schema(ChatRequest)
_OPENAPI = {"requestBody": {"required": True, "content": {"application/json": {"schema": _schema}}}}


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


@router.post("/v1/chat/completions", openapi_extra=_OPENAPI)
async def chat_completions(request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(request.headers.get("authorization"))
    req = decode_body(await request.body(), chat_request_decoder)
    deployment = state.router.resolve(principal.tenant, req.model)
    now = time.time()
    job = Job(
        id=uuid.uuid4().hex,
        tenant=principal.tenant_name,
        model=req.model,
        provider=deployment.provider,
        upstream_model=deployment.model,
        request=req,
        reply_to=state.replies.channel,
        created=now,
        deadline=_deadline(state, request, now),
    )
    timeout_message = (
        f"Request timed out after {job.deadline - now:g}s waiting for provider {job.provider!r} "
        f"(model {job.model!r}); no worker finished it in time."
    )
    waiter = state.replies.open(job.id)
    try:
        await enqueue(state.redis, state.keys, job)
    except RedisError:
        state.replies.close(job.id)
        raise Unavailable("The broker's queue is unavailable; please retry shortly.", retry_after_s=1) from None

    if not req.stream:
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
