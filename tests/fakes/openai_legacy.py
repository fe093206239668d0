"""The fake upstream's /v1/completions (legacy) and /v1/embeddings, OpenAI-shaped.

https://platform.openai.com/docs/api-reference/completions/create,
https://platform.openai.com/docs/api-reference/embeddings/create
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_encoder = msgspec.json.Encoder()


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        return [" ".join(map(str, value))]
    return [v if isinstance(v, str) else " ".join(map(str, v)) for v in value]


def vector(text: str, dimensions: int) -> list[float]:
    """Deterministic per text: what the fake answers for it."""
    digest = hashlib.sha256(text.encode()).digest() * (dimensions // 32 + 1)
    return [round(b / 255.0, 6) for b in digest[:dimensions]]


def legacy_routes(record: Callable[[Request, Any], None], guard: Callable[[Request, Any], Response | None],
                  chunks: int, events: Callable[[AsyncIterator[bytes]], Response]) -> list[Route]:
    """`record` logs the request, `guard` answers auth/injected failures, `events` makes an SSE response."""

    async def completions(request: Request) -> Response:
        body = msgspec.json.decode(await request.body())
        record(request, body)
        if (denied := guard(request, body)) is not None:
            return denied
        prompts = _texts(body["prompt"])
        limit = body.get("max_tokens") or 16
        n = min(chunks, limit)
        finish = "length" if n < chunks else "stop"
        words = [f"w{i}" if i == 0 else f" w{i}" for i in range(n)]
        usage = {"prompt_tokens": sum(len(p.split()) for p in prompts), "completion_tokens": n * len(prompts)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            choices = [{"index": i, "text": "".join(words), "finish_reason": finish, "logprobs": None}
                       for i in range(len(prompts))]
            return Response(_encoder.encode({**base, "choices": choices, "usage": usage}),
                            media_type="application/json")

        async def stream() -> AsyncIterator[bytes]:
            for word in words:
                yield b"data: " + _encoder.encode({**base, "choices": [
                    {"index": i, "text": word, "finish_reason": None, "logprobs": None} for i in range(len(prompts))]}) + b"\n\n"
            yield b"data: " + _encoder.encode({**base, "choices": [
                {"index": i, "text": "", "finish_reason": finish, "logprobs": None} for i in range(len(prompts))]}) + b"\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield b"data: " + _encoder.encode({**base, "choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return events(stream())

    async def embeddings(request: Request) -> Response:
        body = msgspec.json.decode(await request.body())
        record(request, body)
        if (denied := guard(request, body)) is not None:
            return denied
        texts = _texts(body["input"])
        dimensions = body.get("dimensions") or 8
        data = []
        for i, text in enumerate(texts):
            values: Any = vector(text, dimensions)
            if body.get("encoding_format") == "base64":
                values = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
            data.append({"object": "embedding", "index": i, "embedding": values})
        tokens = sum(len(t.split()) for t in texts)
        return Response(_encoder.encode({"object": "list", "data": data, "model": body["model"],
                                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
                        media_type="application/json")

    return [Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"])]
