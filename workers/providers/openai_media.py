"""Shaping OpenAI's media requests for an OpenAI-compatible upstream: pure functions, no I/O.

JSON bodies (images, moderations, speech) go up as the client sent them with only `model` swapped,
so parameters newer than the broker's Structs still arrive. A transcription goes up as multipart form
data, as OpenAI's SDK frames it (`timestamp_granularities[]` repeated, the file as `file`); the file
part is the open spool file, which aiohttp streams without reading it whole.
"""

from __future__ import annotations

from typing import IO, Any

import aiohttp
import msgspec

from broker.wire.audio import TranscriptionRequest

_fields = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()


def with_model(body: bytes, model: str) -> bytes:
    """The client's JSON body with the upstream's model id."""
    fields = _fields.decode(body)
    fields["model"] = model
    return _encoder.encode(fields)


def transcription_form(req: TranscriptionRequest, model: str, audio: IO[bytes]) -> aiohttp.FormData:
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("model", model)
    form.add_field("response_format", req.response_format)
    for name in ("language", "prompt", "temperature"):
        value = getattr(req, name)
        if value is not msgspec.UNSET:
            form.add_field(name, str(value))
    for granularity in req.timestamp_granularities:
        form.add_field("timestamp_granularities[]", granularity)
    for name, value in req.extra:
        form.add_field(name, value)
    form.add_field("file", audio, filename=req.file.filename, content_type=req.file.content_type)
    return form
