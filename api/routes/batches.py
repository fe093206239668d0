"""The Batch API: create, read, list and cancel batches; broker/batches/runner.py runs them.

As OpenAI's (https://platform.openai.com/docs/api-reference/batch): `completion_window` "24h" only,
`GET /v1/batches` pages with `after` and `limit` (1-100, default 20).
"""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.auth import credentials
from api.decode import decode_body, read_body
from api.state import BrokerState
from broker.batches import files
from broker.batches import input as batch_input
from broker.batches import records as batches
from broker.batches import worker as batch_worker
from broker.errors import BrokerError, InvalidRequest, ModelNotFound, Unavailable
from broker.wire import json_encoder

router = APIRouter()


class CreateBatch(msgspec.Struct, forbid_unknown_fields=True):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Annotated[dict[str, Annotated[str, msgspec.Meta(max_length=512)]], msgspec.Meta(max_length=16)] | None = None


_create_decoder = msgspec.json.Decoder(CreateBatch)


def _not_found(batch_id: str) -> BrokerError:
    return ModelNotFound(f"No batch found with id {batch_id!r}.", param="id", code="batch_not_found")


def _json(body: object) -> Response:
    return Response(json_encoder.encode(body), media_type="application/json")


@router.post("/v1/batches")
async def create_batch(request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    asked = decode_body(await read_body(request, 1 << 20), _create_decoder)
    if asked.endpoint not in batch_input.DECODERS:
        raise InvalidRequest(f"`endpoint` must be one of {', '.join(batch_input.DECODERS)}, got {asked.endpoint!r}.",
                             param="endpoint")
    if asked.completion_window not in batches.WINDOW_S:
        raise InvalidRequest(f"`completion_window` must be '24h', got {asked.completion_window!r}.",
                             param="completion_window")
    stored = await files.load(state.redis, state.keys, asked.input_file_id, principal.tenant_name)
    if stored is None or stored.file.purpose != "batch":
        raise InvalidRequest(f"No batch input file with id {asked.input_file_id!r}.", param="input_file_id",
                             status=404, code="file_not_found")
    if stored.endpoint != asked.endpoint:
        raise InvalidRequest(f"The file's requests are for {stored.endpoint}, not {asked.endpoint}.",
                             param="endpoint")
    if batch_worker.queue_missing(state.config):  # checked before a batch exists that could never run
        raise Unavailable(batch_worker.NO_QUEUE_ON_CLUSTER, code="batches_unavailable")
    now = int(time.time())
    batch = batches.Batch(id=batches.new_batch_id(), endpoint=asked.endpoint, input_file_id=asked.input_file_id,
                          completion_window=asked.completion_window, status="validating", created_at=now,
                          expires_at=now + batches.WINDOW_S[asked.completion_window], metadata=asked.metadata,
                          request_counts=batches.RequestCounts(total=stored.lines))
    await batches.create(state.redis, state.keys, principal.tenant_name, batch,
                         state.config.batches.retention_days, key=principal.key_name)
    await batch_worker.first_step(state.redis, state.config, batch.id)
    return _json(batch)


async def _owned(state: BrokerState, request: Request, batch_id: str) -> batches.Loaded:
    principal = state.auth.authenticate(credentials(request.headers))
    loaded = await batches.load(state.redis, state.keys, batch_id, principal.tenant_name)
    if loaded is None:
        raise _not_found(batch_id)
    return loaded


@router.get("/v1/batches/{batch_id}")
async def get_batch(request: Request, batch_id: str) -> Response:
    loaded = await _owned(request.app.state.broker, request, batch_id)
    return _json(batches.as_seen(loaded.batch, loaded.fields))


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> Response:
    """Cancelling → cancelled once the worker has stopped its lines; a batch that ended stays as it is."""
    state: BrokerState = request.app.state.broker
    loaded = await _owned(state, request, batch_id)
    if loaded.batch.status not in batches.ENDED:
        await batches.ask_cancel(state.redis, state.keys, batch_id)
        loaded = await _owned(state, request, batch_id)
    return _json(batches.as_seen(loaded.batch, loaded.fields))


@router.get("/v1/batches")
async def list_batches(request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("`limit` must be from 1 to 100.", param="limit")
    page = await batches.page(state.redis, state.keys, principal.tenant_name,
                              after=request.query_params.get("after"), limit=limit)
    return _json(page)
