"""The chaos soak's upstream: the protocol-faithful OpenAI fake (tests/fakes/openai_upstream.py), with
storms switched on and off at run time.

    POST /chaos/storm {"mode": "429" | "500" | "hang" | "cut" | "none", "seconds": 8}

While a storm blows, every chat call gets it: a 429 with `retry-after` (OpenAI's rate-limit body), a
500 (OpenAI's server_error), a hang (the fake's `slow` model: 30 s before any byte, as a stuck upstream),
or a cut stream (the SSE response ends after its third body write, with neither a finish_reason nor
`[DONE]`; a non-stream call then gets the 500). `GET /v1/fake/stats` counts the calls, as the fake does.

    python -m bench.chaos_upstream --port 9100 [--host 10.231.0.12]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import msgspec
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.fakes.openai_upstream import _injected_error, create_app

MODES = ("429", "500", "hang", "cut")
CUT_AFTER_WRITES = 3  # the headers' write is not one: three body writes, then the connection's end


class Storms:
    """ASGI middleware: the storm in force (if any) applied to /v1/chat/completions."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.mode, self.until = "none", 0.0
        self.stormed = 0  # calls a storm answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/chaos/storm":
            body = msgspec.json.decode(await _read(receive))
            self.mode, self.until = body["mode"], time.monotonic() + float(body.get("seconds", 0))
            return await _send_json(send, {"mode": self.mode})
        mode = self.mode if time.monotonic() < self.until else "none"
        if scope["path"] != "/v1/chat/completions" or mode == "none":
            return await self.app(scope, receive, send)
        self.stormed += 1
        raw = await _read(receive)
        request = msgspec.json.decode(raw)
        if mode == "429" or (mode == "cut" and not request.get("stream")) or mode == "500":
            error = _injected_error("fail-429" if mode == "429" else "fail-500")
            assert error is not None
            return await error(scope, _replay(raw, receive), send)
        if mode == "hang":
            request["model"] = "slow"  # the fake waits 30 s, or until the caller leaves
            return await self.app(scope, _replay(msgspec.json.encode(request), receive), send)
        writes = [0]

        async def cut(message: Message) -> None:
            if message["type"] == "http.response.body":
                writes[0] += 1
                if writes[0] > CUT_AFTER_WRITES:
                    return
                if writes[0] == CUT_AFTER_WRITES:
                    message = {"type": "http.response.body", "body": message.get("body", b""), "more_body": False}
            await send(message)

        await self.app(scope, _replay(raw, receive), cut)


async def _read(receive: Receive) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, once; then the connection's own messages (its disconnect)."""
    given = [False]

    async def again() -> Message:
        if not given[0]:
            given[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def _send_json(send: Send, value: Any) -> None:
    body = msgspec.json.encode(value)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk-delay-s", type=float, default=0.05)
    args = parser.parse_args(argv)
    app = Storms(create_app(chunks=args.chunks, chunk_delay_s=args.chunk_delay_s))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
