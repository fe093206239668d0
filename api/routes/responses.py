"""OpenAI's Responses API for every configured model: POST /v1/responses, and the stored responses.

https://platform.openai.com/docs/api-reference/responses. A request becomes a chat job (its Chat
Completions form: broker/inbound/responses.py), earlier turns of `previous_response_id` included, read
from the store in one step (api/responses_store.py); the worker answers with a Response, or its event
stream. A completed response is stored before its client sees it complete, so the next turn can name
it at once, from any API process.
"""

from __future__ import annotations

import uuid
from typing import Literal

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api import dispatch, responses_store
from api.auth import Principal, credentials
from api.state import BrokerState
from broker.inbound.responses import to_chat
from broker.queue.jobs import Job
from broker.queue.payloads import ResponsesPayload
from broker.wire.responses import ResponsesRequest, encoder, responses_request_decoder

router = APIRouter()
_encoder = msgspec.json.Encoder()


async def _payload(decoded: ResponsesRequest, body: bytes, request: Request, principal: Principal) -> ResponsesPayload:
    state: BrokerState = request.app.state.broker
    history = await responses_store.history(state.redis, state.keys, principal.tenant_name, decoded)
    return ResponsesPayload(to_chat(decoded, history), body, f"resp_{uuid.uuid4().hex}")


def completed_response(job: Job, body: bytes) -> bytes:
    """The Response in a job's final body: the body itself, or a stream's last event's `response`."""
    if not job.streams:
        return body
    data = body[body.rindex(b"\ndata: ") + 7:].strip()
    return bytes(msgspec.json.decode(data, type=dict[str, msgspec.Raw])["response"])


async def _keep(state: BrokerState, principal: Principal, job: Job, body: bytes) -> bytes:
    assert isinstance(job.payload, ResponsesPayload)
    await responses_store.save(state.redis, state.keys, state.config.responses, principal.tenant_name,
                               job.payload.response_id, responses_request_decoder.decode(job.payload.body),
                               completed_response(job, body))
    return body


router.add_api_route("/v1/responses", dispatch.endpoint(responses_request_decoder, _payload, _keep), methods=["POST"])


async def _stored(request: Request, response_id: str) -> tuple[BrokerState, Principal, responses_store.Stored]:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    stored = await responses_store.load(state.redis, state.keys, principal.tenant_name, response_id)
    if stored is None:
        raise responses_store.not_found(response_id)
    return state, principal, stored


@router.get("/v1/responses/{response_id}")
async def retrieve(request: Request, response_id: str) -> Response:
    _, _, stored = await _stored(request, response_id)
    return Response(stored.response, media_type="application/json")


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
