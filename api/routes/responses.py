"""OpenAI's Responses API for every configured model: POST /v1/responses, and the stored responses.

https://platform.openai.com/docs/api-reference/responses. A request becomes a chat job (its Chat
Completions form: broker/inbound/responses.py), earlier turns of `previous_response_id` included, read
from the store in one step (api/responses_store.py); the worker answers with a Response, or its event
stream. A completed response is stored before its client sees it complete, so the next turn can name
it at once, from any API process.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api import dispatch, responses_store, sse
from api.auth import Principal, credentials
from api.direct_route import DirectRoute
from api.dialects import dialect
from api.routes import jobs
from api.state import BrokerState
from broker.errors import InvalidRequest
from broker.inbound import responses_native as native
from broker.inbound.responses import to_chat
from broker.inbound.responses_output import new_response
from broker.queue import async_jobs, stored_responses
from broker.queue.jobs import Job
from broker.queue.payloads import ResponsesPayload
from broker.routing.capabilities import estimate_tokens
from broker.wire import ChatRequest
from broker.wire.responses import (
    AnyItem,
    MessageItem,
    ResponseError,
    ResponsesRequest,
    encoder,
    responses_request_decoder,
)

router = APIRouter()
_encoder = msgspec.json.Encoder()


async def _payload(decoded: ResponsesRequest, body: bytes, request: Request, principal: Principal) -> ResponsesPayload:
    state: BrokerState = request.app.state.broker
    history = await responses_store.history(state.redis, state.keys, principal.tenant_name, decoded)
    speaks = state.router.speaks_responses(principal.tenant, decoded.model)
    native_only = False
    try:
        chat, history = _within_context(state, principal, decoded, history)
    except InvalidRequest as refused:
        # What only a Responses-speaking upstream runs (a built-in tool, OpenAI's own items): such a
        # deployment can still serve it as sent, routing told to pick one; with none, the refusal stands.
        if not speaks or refused.code == "context_length_exceeded":
            raise
        try:
            chat, _ = _within_context(state, principal, *native.translatable(decoded, history))
        except InvalidRequest:
            raise refused from None
        native_only = True
    # What the response is stored with, at its end (`_keep`, `_queued`): neither decoded nor read again.
    request.state.responses_turn = (decoded, history)
    native_body = (native.native_body(body, history, decoded.items())
                   if speaks and native.needs_native_body(decoded, history) else b"")
    # Kept by the worker that answers it, with its reply (broker/queue/stored_responses.py).
    keep = decoded.store is not False and decoded.background is not True
    return ResponsesPayload(chat, body, f"resp_{uuid.uuid4().hex}", decoded.background is True, native_body,
                            native_only, keep, encoder.encode(history) if keep and history else b"")


def _within_context(state: BrokerState, principal: Principal, request: ResponsesRequest,
                    history: list[AnyItem]) -> tuple[ChatRequest, list[AnyItem]]:
    """The request's Chat form, fitted to the model's context window as `truncation` says
    (https://platform.openai.com/docs/api-reference/responses/create): `auto` drops the oldest earlier
    turns, whole (a tool call never loses its output), until it fits; `disabled`, the default, refuses
    it. The window is the largest of the model's deployments' `max_context_tokens` (failover moves to a
    larger one); with none configured, the upstream is the judge."""
    chat = to_chat(request, history)
    limits = [state.router.capabilities(d).max_context_tokens
              for d in state.router.group(principal.tenant, request.model).deployments]
    window = max(limit or 0 for limit in limits) if limits and all(limits) else None
    while window is not None and estimate_tokens(chat) > window:
        if request.truncation != "auto" or not history:
            raise InvalidRequest(f"The input is about {estimate_tokens(chat):,} tokens, more than model "
                                 f"{request.model!r}'s context window of {window:,}; `truncation: auto` drops "
                                 "the oldest turns to fit.", param="input", code="context_length_exceeded")
        history = _without_oldest_turn(history)
        chat = to_chat(request, history)
    return chat, history


def _without_oldest_turn(history: list[AnyItem]) -> list[AnyItem]:
    """The history from its second user message on: the first turn, its answer and tool calls, dropped."""
    starts = [i for i, item in enumerate(history) if isinstance(item, MessageItem) and item.role == "user"]
    return history[starts[1]:] if len(starts) > 1 else []


async def _keep(state: BrokerState, http: Request, principal: Principal, job: Job, body: bytes) -> bytes:
    """A cache hit's Response, kept as its worker would have kept it had one answered it."""
    assert isinstance(job.payload, ResponsesPayload)
    request, earlier = http.state.responses_turn
    response = stored_responses.completed_response(body, streamed=job.streams)
    await responses_store.save(state.scripts.response_keep, state.keys, state.config.responses, principal.tenant_name,
                               job.payload.response_id, request, earlier, response)
    return body


async def _queued(state: BrokerState, http: Request, principal: Principal, job: Job) -> Response:
    """`background: true`: its Response at once, status `queued`, kept with the job that will complete it;
    with `stream: true`, its events as they come, read from the job's event log, so a client that leaves
    neither cancels it nor loses it (GET /v1/responses/{id}?stream=true picks it up again)."""
    assert isinstance(job.payload, ResponsesPayload)
    request, earlier = http.state.responses_turn
    queued = new_response(request, response_id=job.payload.response_id, created_at=int(job.created))
    queued.status = "queued"
    body = encoder.encode(queued)
    await responses_store.save(state.scripts.response_keep, state.keys, state.config.responses, principal.tenant_name,
                               job.payload.response_id, request, earlier, body, job=job.id)
    if job.streams:
        return _replay(state, job.id, job.deadline, after=-1)
    return Response(body, media_type="application/json")


def _replay(state: BrokerState, job_id: str, deadline: float, *, after: int) -> Response:
    """A background stream's events with a sequence_number past `after`, from its job's event log
    (api/routes/jobs.py reads it), then the live ones, then [DONE]."""
    response = sse.EventStream(_after(jobs.replay(state, job_id, None, deadline, lambda: None,
                                                    dialect("responses")), after))
    response.headers["x-request-id"] = f"req_{job_id}"
    return response


_SEQUENCE = re.compile(rb'"sequence_number":(\d+)')


async def _after(events: AsyncIterator[bytes], after: int) -> AsyncIterator[bytes]:
    """Only the events numbered past `after` (the SDK's `starting_after`), keep-alives and the end kept.
    A worker numbers a stream's events as it emits them, from 0, so the number is the event's place."""
    async for chunk in events:
        if after < 0 or b"sequence_number" not in chunk:
            yield chunk
            continue
        blocks = [b for b in chunk.split(b"\n\n") if b]
        kept = [b for b in blocks  # an error the API adds is not numbered in the stream: never dropped
                if b"event: error" in b or not (m := _SEQUENCE.search(b)) or int(m.group(1)) > after]
        if kept:
            yield b"\n\n".join(kept) + b"\n\n"


router.add_api_route("/v1/responses", dispatch.endpoint(responses_request_decoder, _payload, _keep, _queued),
                     methods=["POST"], route_class_override=DirectRoute)


async def _stored(request: Request, response_id: str) -> tuple[BrokerState, Principal, responses_store.Stored]:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    stored = await responses_store.load(state.redis, state.keys, principal.tenant_name, response_id)
    if stored is None:
        raise responses_store.not_found(response_id)
    return state, principal, stored


class _Progress(msgspec.Struct, omit_defaults=True):
    status: str
    error: ResponseError | None = None


async def _current(state: BrokerState, principal: Principal, response_id: str,
                   stored: responses_store.Stored) -> bytes:
    """A stored response as it is now: a background one follows its job, and is kept once it is done."""
    if stored.response is not None or stored.job is None or stored.queued is None:
        return stored.response or b"{}"
    found = await async_jobs.load(state.redis, state.keys, stored.job, principal.tenant_name)
    if found is None:
        raise responses_store.not_found(response_id)
    view = async_jobs.view(stored.job, found.record, found.flags, found.result)
    if view.status == "completed" and view.response is not None:
        done = stored_responses.completed_response(bytes(view.response), streamed=found.record.streams)
        await responses_store.complete(state.redis, state.keys, response_id, done)
        return done
    status = {"expired": "failed"}.get(view.status, view.status)
    error = ResponseError(view.error.code or view.error.type, view.error.message) if view.error else None
    fields = msgspec.json.decode(stored.queued, type=dict[str, msgspec.Raw])
    fields.update({name: msgspec.Raw(encoder.encode(value))
                   for name, value in msgspec.structs.asdict(_Progress(status, error)).items()})
    return encoder.encode(fields)


@router.get("/v1/responses/{response_id}")
async def retrieve(request: Request, response_id: str, stream: bool = False, starting_after: int = -1) -> Response:
    state, principal, stored = await _stored(request, response_id)
    if not stream:
        return Response(await _current(state, principal, response_id, stored), media_type="application/json")
    found = (await async_jobs.load(state.redis, state.keys, stored.job, principal.tenant_name)
             if stored.job is not None else None)
    if found is None or not found.record.streams:
        raise InvalidRequest("Only a response created with `background: true` and `stream: true` can be "
                             "streamed again.", param="stream")
    return _replay(state, stored.job or "", found.record.deadline, after=starting_after)


@router.post("/v1/responses/{response_id}/cancel")
async def cancel(request: Request, response_id: str) -> Response:
    """A background response's job is cancelled (its upstream call aborted); one that has ended stays as it is."""
    state, principal, stored = await _stored(request, response_id)
    if stored.job is None:
        raise InvalidRequest("Only a response created with `background: true` can be cancelled.", param="response_id")
    found = await async_jobs.load(state.redis, state.keys, stored.job, principal.tenant_name)
    if found is not None:
        await async_jobs.cancel_job(state.redis, state.keys, stored.job, found)
    return Response(await _current(state, principal, response_id, stored), media_type="application/json")


class _Deleted(msgspec.Struct):
    id: str
    object: str = "response"
    deleted: bool = True


@router.delete("/v1/responses/{response_id}")
async def delete(request: Request, response_id: str) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    if not await responses_store.delete(state.redis, state.keys, principal.tenant_name, response_id):
        raise responses_store.not_found(response_id)
    return Response(_encoder.encode(_Deleted(response_id)), media_type="application/json")


class _ItemList(msgspec.Struct):
    data: list[msgspec.Raw]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: str = "list"


@router.get("/v1/responses/{response_id}/input_items")
async def input_items(request: Request, response_id: str, limit: int = Query(20, ge=1, le=100),
                      order: Literal["asc", "desc"] = "desc", after: str | None = None) -> Response:
    """The response's own input items, a page at a time, as the SDK's auto-pager reads them."""
    _, _, stored = await _stored(request, response_id)
    items = [msgspec.Raw(encoder.encode(item)) for item in stored.input_items()]
    ids = [getattr(item, "id", None) for item in stored.input_items()]
    if order == "desc":
        items, ids = items[::-1], ids[::-1]
    start = ids.index(after) + 1 if after in ids else 0
    page, page_ids = items[start:start + limit], ids[start:start + limit]
    listed = _ItemList(page, page_ids[0] if page_ids else None, page_ids[-1] if page_ids else None,
                       start + limit < len(items))
    return Response(_encoder.encode(listed), media_type="application/json")
