"""POST /v1/audio/transcriptions, /v1/audio/translations and /v1/audio/speech
(https://platform.openai.com/docs/api-reference/audio).

A transcription's multipart upload is copied, a block at a time, to the spool on disk
(broker/queue/spool.py; Starlette itself spools a part past 1 MB), and its job carries the file by
reference: no audio enters Redis. The spooled file is removed once the job has ended for its client.
The answer has the content type of its `response_format` (text/plain for text, srt and vtt).

Speech streams: the worker relays the audio while it arrives, as raw bytes on the job's reply stream,
and the client reads them as a chunked body with the format's content type.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.types import Receive, Scope, Send

from api import dispatch
from api.auth import Principal, credentials
from api.decode import invalid_field
from api.dialects import AudioCut
from api.direct_route import DirectRoute
from api.sse import EventStream
from api.state import BrokerState
from broker.errors import InvalidRequest
from broker.queue import spool
from broker.queue.payloads import Payload, SpeechPayload, TranscriptionPayload
from broker.wire.audio import (
    SPEECH_MEDIA_TYPES,
    TRANSCRIPT_FORMATS,
    TRANSCRIPT_MEDIA_TYPES,
    SpeechRequest,
    TranscriptionRequest,
    Upload,
    speech_request_decoder,
)

log = logging.getLogger(__name__)

COPY_BLOCK = 1 << 20
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the other fields, beside the file
_TYPED = ("model", "response_format", "language", "prompt", "temperature")
_GRANULARITIES = ("timestamp_granularities[]", "timestamp_granularities")


def _too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(f"The audio file is larger than this server accepts ({limit:,} bytes).", param="file",
                          status=413, code="request_too_large")


def _fields(form: Any, upload: Upload, translate: bool) -> TranscriptionRequest:
    """The form's fields as a request (a 400 naming the field if one is wrong)."""
    if str(form.get("stream", "false")).lower() == "true":
        raise InvalidRequest("Streamed transcriptions are not supported here; omit `stream`.", param="stream")
    fields: dict[str, Any] = {name: form[name] for name in _TYPED if isinstance(form.get(name), str)}
    if "response_format" in fields and fields["response_format"] not in TRANSCRIPT_FORMATS:
        raise InvalidRequest(f"`response_format` must be one of {', '.join(TRANSCRIPT_FORMATS)}, got "
                             f"{fields['response_format']!r}.", param="response_format")
    if "temperature" in fields:
        try:
            fields["temperature"] = float(fields["temperature"])
        except ValueError:
            raise InvalidRequest("`temperature` must be a number.", param="temperature") from None
    fields["timestamp_granularities"] = [g for name in _GRANULARITIES for g in form.getlist(name)]
    fields["extra"] = [(name, value) for name, value in form.multi_items()
                       if name not in (*_TYPED, *_GRANULARITIES, "file", "stream") and isinstance(value, str)]
    try:
        return msgspec.convert({**fields, "file": upload, "translate": translate}, TranscriptionRequest)
    except msgspec.ValidationError as exc:
        raise invalid_field(str(exc)) from None


async def _spooled(state: BrokerState, part: UploadFile, limit: int) -> tuple[Path, int]:
    state.spool.sweep()
    keep_s = max(state.config.server.request_timeout_s, state.config.server.async_timeout_s)
    path, out = state.spool.create(keep_s)
    size = 0
    try:
        with out:
            while block := await part.read(COPY_BLOCK):
                size += len(block)
                if size > limit:
                    raise _too_large(limit)
                out.write(block)
    except BaseException:
        spool.discard(path)
        raise
    return path, size


async def _transcribe(request: Request, *, translate: bool) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    limit = state.config.server.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise _too_large(limit)
    try:
        form = await request.form(max_files=1, max_fields=32)
    except Exception as exc:  # not multipart, or a malformed one: the client's error, never a 500
        raise InvalidRequest(f"Expected a multipart/form-data body with `file` and `model`: {exc}", param="file") from None
    path: Path | None = None
    try:
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise InvalidRequest("`file` must be an audio file part of the multipart body.", param="file")
        if not isinstance(form.get("model"), str):
            raise InvalidRequest("`model` is required.", param="model")
        path, size = await _spooled(state, part, limit)
        if size == 0:
            raise InvalidRequest("The audio file is empty.", param="file")
        upload = Upload(str(path), part.filename or "audio", part.content_type or "application/octet-stream", size)
        req = _fields(form, upload, translate)
        if req.response_format not in ("json", "verbose_json") and dispatch.prefers_async(request):
            raise InvalidRequest("An async job's result is JSON (/v1/jobs/{id}); ask for `json` or `verbose_json`.",
                                 param="response_format")
        response = await dispatch.respond(state, request, principal, TranscriptionPayload(req))
    except BaseException:
        if path is not None:
            spool.discard(path)
        raise
    finally:
        await form.close()
    if response.status_code != 202:  # ended (an async job's worker removes its own upload)
        spool.discard(path)
    if response.status_code == 200:
        response.headers["content-type"] = TRANSCRIPT_MEDIA_TYPES[req.response_format]
    return response


async def transcriptions(request: Request) -> Response:
    return await _transcribe(request, translate=False)


async def translations(request: Request) -> Response:
    return await _transcribe(request, translate=True)


_MEDIA_TYPE = "llm_broker.media_type"


async def _speech_payload(req: SpeechRequest, body: bytes, request: Request, _: Principal) -> Payload:
    if dispatch.prefers_async(request):
        raise InvalidRequest("Speech is streamed to its client; it cannot run as an async job.", param="Prefer")
    request.scope[_MEDIA_TYPE] = SPEECH_MEDIA_TYPES[req.response_format]
    return SpeechPayload(req, body)


_speech = dispatch.endpoint(speech_request_decoder, _speech_payload)


class _AudioStream(Response):
    """The reply path's stream carrying raw audio (api/dialects.py), with its format's content type. Cut
    after its first bytes (AudioCut), it is left incomplete, which has the server drop the connection:
    a warning here, not an unhandled error's traceback."""

    def __init__(self, stream: EventStream, media_type: str) -> None:
        self.stream = stream
        self.status_code = stream.status_code
        self.background = None
        stream.headers["content-type"] = media_type
        self.raw_headers = stream.raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream(scope, receive, send)
        except AudioCut as cut:
            log.warning("speech stream cut after its first bytes: %s", cut)


async def speech(request: Request) -> Response:
    response = await _speech(request)
    if isinstance(response, EventStream):
        return _AudioStream(response, request.scope[_MEDIA_TYPE])
    return response


router = APIRouter(route_class=DirectRoute)
router.add_api_route("/v1/audio/transcriptions", transcriptions, methods=["POST"])
router.add_api_route("/v1/audio/translations", translations, methods=["POST"])
router.add_api_route("/v1/audio/speech", speech, methods=["POST"])
