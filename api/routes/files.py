"""The Files API, for batch inputs and outputs: upload, list, read, delete.

As OpenAI's (https://platform.openai.com/docs/api-reference/files): multipart `file` + `purpose`,
`expires_after[seconds]` from 3600 to 2592000, `GET /v1/files` with `after`, `limit` (1-10000),
`order` and `purpose`.

Bodies go to the file store (broker/batches/store.py: a shared directory or an S3 bucket), never into
Redis. Starlette spools an upload to disk past 1 MB; it is validated line by line from there in a thread
(broker/batches/input.py), then streamed to the store, so a 200 MB file costs the API neither its
memory nor its event loop, and a file that fails validation never reaches the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import IO

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import UploadFile

from api.auth import credentials
from api.state import BrokerState
from broker.batches import files
from broker.batches import input as batch_input
from broker.errors import BrokerError, InvalidRequest, ModelNotFound
from broker.wire import json_encoder

router = APIRouter()

MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 2_592_000
COPY_BLOCK = 1 << 20


def _not_found(file_id: str) -> BrokerError:
    return ModelNotFound(f"No such File object: {file_id}", param="id", code="file_not_found")


def _too_large(limit: int) -> BrokerError:
    return InvalidRequest(f"A file may be at most {limit} bytes.", param="file", status=413, code="request_too_large")


async def _owned(state: BrokerState, request: Request, file_id: str) -> files.StoredFile:
    principal = state.auth.authenticate(credentials(request.headers))
    stored = await files.load(state.redis, state.keys, file_id, principal.tenant_name)
    if stored is None:
        raise _not_found(file_id)
    return stored


def _expiry_s(form_value: object, default_s: int) -> int:
    if form_value is None:
        return default_s
    try:
        seconds = int(str(form_value))
    except ValueError:
        seconds = -1
    if not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
        raise InvalidRequest(f"`expires_after[seconds]` must be from {MIN_EXPIRY_S} to {MAX_EXPIRY_S}.",
                             param="expires_after[seconds]")
    return seconds


@router.post("/v1/files")
async def upload(request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    limits = state.config.batches
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_file_bytes + 65536:
        raise _too_large(limits.max_file_bytes)
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as exc:  # not multipart, or a malformed one: the client's error, never a 500
        raise InvalidRequest(f"Expected a multipart/form-data body with `file` and `purpose`: {exc}",
                             param="file") from None
    upload = form.get("file")
    purpose = form.get("purpose")
    if purpose != "batch":
        raise InvalidRequest(f"`purpose` must be 'batch' (the files this broker keeps are batch inputs), "
                             f"got {purpose!r}.", param="purpose")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("`file` must be a file part of the multipart body.", param="file")
    ttl_s = _expiry_s(form.get("expires_after[seconds]"), limits.file_ttl_days * 86_400)
    file_id = files.new_file_id()
    written = False
    try:
        if await asyncio.to_thread(_size, upload.file) > limits.max_file_bytes:
            raise _too_large(limits.max_file_bytes)
        summary = await asyncio.to_thread(batch_input.validate, _blocks(upload.file), max_lines=limits.max_lines)
        await upload.seek(0)
        written = True
        size = await state.files.put(file_id, _uploaded(upload))
        now = int(time.time())
        stored = files.StoredFile(files.FileObject(id=file_id, bytes=size, created_at=now,
                                                   filename=upload.filename or "batch.jsonl", purpose="batch",
                                                   expires_at=now + ttl_s),
                                  principal.tenant_name, summary.lines, summary.endpoint)
        await files.save(state.redis, state.keys, stored)
    except BaseException:  # a Redis error too: no file without its record
        if written:
            state.spawn(state.files.delete(file_id))  # in a task of its own: this one may be cancelled
        raise
    finally:
        await form.close()
    return Response(json_encoder.encode(stored.file), media_type="application/json")


def _size(spooled: IO[bytes]) -> int:
    spooled.seek(0, 2)
    return spooled.tell()


def _blocks(spooled: IO[bytes]) -> Iterator[bytes]:
    spooled.seek(0)
    while block := spooled.read(COPY_BLOCK):
        yield block


async def _uploaded(upload: UploadFile) -> AsyncIterator[bytes]:
    while block := await upload.read(COPY_BLOCK):
        yield block


@router.get("/v1/files")
async def list_files(request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    query = request.query_params
    try:
        limit = int(query.get("limit", "10000"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 10_000:
        raise InvalidRequest("`limit` must be from 1 to 10000.", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("`order` must be asc or desc.", param="order")
    found, more = await files.listing(state.redis, state.keys, principal.tenant_name, after=query.get("after"),
                                      limit=limit, ascending=order == "asc", purpose=query.get("purpose"))
    body = {"object": "list", "data": found, "first_id": found[0].id if found else None,
            "last_id": found[-1].id if found else None, "has_more": more}
    return Response(json_encoder.encode(body), media_type="application/json")


@router.get("/v1/files/{file_id}")
async def get_file(request: Request, file_id: str) -> Response:
    stored = await _owned(request.app.state.broker, request, file_id)
    return Response(json_encoder.encode(stored.file), media_type="application/json")


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Response:
    state: BrokerState = request.app.state.broker
    stored = await _owned(state, request, file_id)
    blocks = state.files.stream(stored.file.id)
    try:
        first = await anext(blocks, b"")
    except FileNotFoundError:
        raise _not_found(file_id) from None

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for block in blocks:
            yield block

    return StreamingResponse(body(), media_type="application/octet-stream",
                             headers={"content-length": str(stored.file.bytes)})


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> Response:
    state: BrokerState = request.app.state.broker
    stored = await _owned(state, request, file_id)
    await files.delete(state.redis, state.keys, state.files, stored)
    return Response(json_encoder.encode({"id": stored.file.id, "object": "file", "deleted": True}),
                    media_type="application/json")
