"""The HTTP/1.1 protocol uvicorn runs the API with: httptools', with two changes.

- A request it cannot parse (a NUL or bare CR in a header, a non-ASCII header name, a garbled request
  line) is answered in the OpenAI error shape instead of uvicorn's plain-text "Invalid HTTP request
  received.". The parser has given up on the connection by then: the answer is written straight to the
  transport and the connection closed, as uvicorn does.
- An answer with a Content-Length leaves in one send, its head and its body together (one
  `transport.writelines`: uvloop makes it one writev, without copying the body).
  uvicorn writes the head when `http.response.start` arrives and the body at `http.response.body`: two
  sends on the socket per plain answer, and on loopback each send does the receiver's TCP work too. The
  head's send alone was 13% of the API's samples at c=64 (py-spy, issue 22).
"""

from __future__ import annotations

from typing import Any

from uvicorn._types import ASGI3Application, ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from api import request_ids
from broker.errors import InvalidRequest
from broker.wire import json_encoder

_BODY = json_encoder.encode(InvalidRequest(
    "The request is not valid HTTP/1.1 (for example a control character in a header, or a header name that "
    "is not ASCII), so it could not be read.", code="invalid_http_request").to_body())


class OpenAIErrorsHTTPProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        # Every error carries a request id, this one too (api/request_ids.py).
        content.extend([b"x-request-id: " + request_ids.new().encode("ascii") + b"\r\n",
                        b"content-type: application/json\r\n",
                        b"content-length: " + str(len(_BODY)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n\r\n", _BODY])
        self.transport.write(b"".join(content))
        self.transport.close()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # Every cycle, pipelined ones too, starts here, before its first `send`; the subclass adds no state
        # of its own beyond a class default, so the instance can change class.
        cycle.__class__ = OneWriteCycle
        super()._start_asgi_task(cycle, app)


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's cycle, whose head of a Content-Length answer waits for the first body message and leaves
    with it. uvicorn's `send` still does all the HTTP work (header checks, keep-alive, HEAD, chunking,
    lengths, closing): only where its bytes go changes, so each rule stays uvicorn's.

    Only a Content-Length answer waits: its body follows its start at once (Starlette's Response sends
    both back to back). A chunked answer (a stream) may start long before its first chunk, and a client
    must see its status when it is sent, so its head is written at once as before."""

    _head: bytes | None = None

    async def send(self, message: ASGISendEvent) -> None:
        # uvicorn's `send` awaits a paused transport's drain before anything else; waited for here, so that
        # no other task (a `receive`) meets the stand-in transport below during that wait.
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if not self.response_started:
            transport = self.transport
            self.transport = held = _Held(transport)  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            if held.data:
                if self.chunked_encoding is False and self.scope["method"] != "HEAD":
                    self._head = held.data
                else:
                    transport.write(held.data)
            return
        head = self._head
        if head is None:
            await super().send(message)
            return
        self._head = None
        transport = self.transport
        self.transport = joined = _Prefixed(transport, head)  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport
            # No write came (a client gone: uvicorn writes nothing then), or the message was wrong: the head
            # goes alone, as uvicorn would have sent it, unless the client is gone.
            if joined.head is not None and not self.disconnected:
                transport.write(joined.head)


class _Held:
    """Stands in for the transport while uvicorn writes a head: keeps it."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.data = b""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def write(self, data: bytes) -> None:
        self.data += data


class _Prefixed:
    """Stands in for the transport while uvicorn writes a body: the first write carries the held head."""

    def __init__(self, transport: Any, head: bytes) -> None:
        self.transport = transport
        self.head: bytes | None = head

    def write(self, data: bytes) -> None:
        if self.head is None:
            self.transport.write(data)
            return
        head, self.head = self.head, None
        # uvloop sends both in one writev, without copying the body; asyncio's own loop joins them.
        self.transport.writelines((head, data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def close(self) -> None:  # `Connection: close` answers: the head and body first, then the close
        if self.head is not None:
            self.transport.write(self.head)
            self.head = None
        self.transport.close()
