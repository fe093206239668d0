"""The fake upstream's media endpoints, checked as OpenAI checks them.

https://platform.openai.com/docs/api-reference/images/create, .../moderations/create,
.../audio/createTranscription, .../audio/createTranslation, .../audio/createSpeech.

- Images: JSON, `prompt` required, `n` 1-10 (DALL·E 3: only 1), `response_format` url|b64_json (not for
  GPT image models, which always answer b64 and report token usage); a tiny PNG, or a URL this fake serves.
- Moderations: `input` required; a result per string.
- Transcriptions/translations: multipart/form-data only (a JSON body is a 400, as OpenAI's), `file` a file
  part and `model` a field, `response_format` one of five, `timestamp_granularities[]` only with
  verbose_json. The transcript names the file's size and SHA-256, so a test sees the audio arrived whole.
  text/srt/vtt come back as text/plain, the JSON ones with `usage` seconds (1 s per 16,000 bytes).
- Speech: JSON, `model`/`input`/`voice` required, `input` at most 4096 characters; a WAV streamed in
  SPEECH_CHUNKS pieces, SPEECH_DELAY_S apart, with the format's content type; model `midstream-error`
  drops the connection after two pieces.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_encoder = msgspec.json.Encoder()
SPEECH_CHUNKS = 6
SPEECH_DELAY_S = 0.1
SAMPLE_RATE = 24_000
FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                "wav": "audio/wav", "pcm": "audio/pcm"}


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return Response(_encoder.encode(body), status, media_type="application/json")


def _unsuffixed(body: dict[str, Any]) -> dict[str, Any]:
    """The body with its model's "@..." suffix dropped (the injected failures' names: openai_upstream.py)."""
    return {**body, "model": str(body.get("model", "")).split("@")[0]}


def tiny_png(seed: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    pixel = hashlib.sha256(seed).digest()[:3]
    raw = (b"\x00" + pixel * 4) * 4
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _wav(seconds: float) -> bytes:
    count = int(seconds * SAMPLE_RATE)
    samples = struct.pack(f"<{count}h", *(int(5000 * math.sin(i / 10)) for i in range(count)))
    header = (b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVE" + b"fmt "
              + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
              + b"data" + struct.pack("<I", len(samples)))
    return header + samples


def media_routes(record: Callable[[Request, Any], None], guard: Callable[[Request, Any], Response | None],
                 events: Callable[[AsyncIterator[bytes]], Response]) -> list[Route]:
    images: dict[str, bytes] = {}

    async def admitted_json(request: Request) -> dict[str, Any] | Response:
        """The request's JSON object, recorded; or what OpenAI answers a body it cannot parse, or a caller
        the guard refuses."""
        try:
            body = msgspec.json.decode(await request.body())
        except msgspec.DecodeError:
            body = None
        record(request, body)
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        return denied if (denied := guard(request, _unsuffixed(body))) is not None else body

    async def generations(request: Request) -> Response:
        body = await admitted_json(request)
        if isinstance(body, Response):
            return body
        model = str(body.get("model", "dall-e-2")).split("@")[0]
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return _error(400, "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= (1 if model == "dall-e-3" else 10):
            return _error(400, f"Invalid 'n': {n}.", "n", "invalid_value")
        gpt_image = model.startswith("gpt-image")
        fmt = body.get("response_format", "url")
        if gpt_image and "response_format" in body or fmt not in ("url", "b64_json"):
            return _error(400, f"Unknown parameter or value: 'response_format' ({fmt!r}).", "response_format")
        data = []
        for i in range(n):
            png = tiny_png(f"{body['prompt']}#{i}".encode())
            if fmt == "url" and not gpt_image:
                name = hashlib.sha256(png).hexdigest()[:16]
                images[name] = png
                data.append({"url": f"{request.base_url}v1/fake/images/{name}.png", "revised_prompt": body["prompt"]})
            else:
                data.append({"b64_json": base64.b64encode(png).decode()})
        answer: dict[str, Any] = {"created": 1700000000, "data": data}
        if gpt_image:
            answer |= {"usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
                                 "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}},
                       "quality": body.get("quality", "high"), "size": body.get("size", "1024x1024")}
        return Response(_encoder.encode(answer), media_type="application/json")

    async def image_file(request: Request) -> Response:
        png = images.get(request.path_params["name"])
        return Response(png, media_type="image/png") if png else _error(404, "No such image.")

    async def moderations(request: Request) -> Response:
        body = await admitted_json(request)
        if isinstance(body, Response):
            return body
        inputs = body.get("input")
        if not inputs:
            return _error(400, "Missing required parameter: 'input'.", "input", "missing_required_parameter")
        texts = [inputs] if isinstance(inputs, str) else inputs
        names = ("harassment", "hate", "self-harm", "sexual", "violence")
        results = [{"flagged": "kill" in str(t), "categories": {k: k == "violence" and "kill" in str(t) for k in names},
                    "category_scores": {k: 0.9 if k == "violence" and "kill" in str(t) else 0.01 for k in names},
                    "category_applied_input_types": {k: ["text"] for k in names}} for t in texts]
        return Response(_encoder.encode({"id": "modr-fake", "model": body.get("model", "omni-moderation-latest"),
                                         "results": results}), media_type="application/json")

    async def transcribe(request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("multipart/form-data; boundary="):
            record(request, None)
            return _error(400, "Invalid Content-Type header; expected multipart/form-data.")
        form = await request.form()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        part = form.get("file")
        digest, size = hashlib.sha256(), 0
        if isinstance(part, UploadFile):
            while block := await part.read(1 << 20):
                digest.update(block)
                size += len(block)
        record(request, {**fields, "timestamp_granularities[]": form.getlist("timestamp_granularities[]"),
                         "file": {"filename": part.filename, "content_type": part.content_type, "bytes": size}
                         if isinstance(part, UploadFile) else None})
        if (denied := guard(request, _unsuffixed(fields))) is not None:
            return denied
        if not isinstance(part, UploadFile):
            return _error(400, "Missing required parameter: 'file'.", "file", "missing_required_parameter")
        if "model" not in fields:
            return _error(400, "Missing required parameter: 'model'.", "model", "missing_required_parameter")
        fmt = fields.get("response_format", "json")
        if fmt not in FORMATS:
            return _error(400, f"Invalid value for 'response_format': {fmt!r}.", "response_format")
        if form.getlist("timestamp_granularities[]") and fmt != "verbose_json":
            return _error(400, "response_format must be set verbose_json to use timestamp granularities.",
                          "timestamp_granularities")
        seconds = round(size / 16_000, 2)
        task = "translate" if request.url.path.endswith("translations") else "transcribe"
        text = f"heard {size} bytes sha256 {digest.hexdigest()[:16]} {task}"
        match fmt:
            case "json":
                return Response(_encoder.encode({"text": text, "usage": {"type": "duration", "seconds": seconds}}),
                                media_type="application/json")
            case "verbose_json":
                return Response(_encoder.encode({"task": task, "language": "english", "duration": seconds,
                                                 "text": text, "segments": []}), media_type="application/json")
            case "text":
                return Response(text + "\n", media_type="text/plain")
            case "srt":
                return Response(f"1\n00:00:00,000 --> 00:00:0{min(int(seconds), 9)},000\n{text}\n\n",
                                media_type="text/plain")
        return Response(f"WEBVTT\n\n00:00:00.000 --> 00:00:0{min(int(seconds), 9)}.000\n{text}\n\n",
                        media_type="text/plain")

    async def speech(request: Request) -> Response:
        body = await admitted_json(request)
        if isinstance(body, Response):
            return body
        for name in ("model", "input", "voice"):
            if name not in body:
                return _error(400, f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
        if len(body["input"]) > 4096:
            return _error(400, "'input' is too long: at most 4096 characters.", "input", "string_above_max_length")
        fmt = body.get("response_format", "mp3")
        if fmt not in SPEECH_TYPES:
            return _error(400, f"Invalid value for 'response_format': {fmt!r}.", "response_format")
        audio = _wav(0.5)
        step = -(-len(audio) // SPEECH_CHUNKS)

        cut = str(body["model"]).split("@")[0] == "midstream-error"

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(audio), step):
                if start:
                    await asyncio.sleep(SPEECH_DELAY_S)
                if cut and start >= 2 * step:  # the connection drops mid-body (no terminating chunk)
                    raise ConnectionResetError("midstream-error: the fake drops the connection")
                yield audio[start:start + step]

        response = events(pieces())
        response.headers["content-type"] = SPEECH_TYPES[fmt]
        return response

    return [
        Route("/v1/images/generations", generations, methods=["POST"]),
        Route("/v1/fake/images/{name}.png", image_file, methods=["GET"]),
        Route("/v1/moderations", moderations, methods=["POST"]),
        Route("/v1/audio/transcriptions", transcribe, methods=["POST"]),
        Route("/v1/audio/translations", transcribe, methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
    ]
