"""api/http_protocol.py's one-write answers, on a real socket to a real uvicorn server running the API's
protocol class: each write the server makes on the connection's transport is recorded, and a plain
answer must leave in exactly one, head and body together, while keep-alive, pipelining, HEAD,
`Connection: close`, `Expect: 100-continue` and streams behave as uvicorn's own protocol has them.

The app is a small Starlette one (a Content-Length answer, a stream that waits for the test before its
first chunk): the protocol is what is under test, and the API's own routes go through it in the SDK
suites (tests/test_sdk_end_to_end.py, tests/test_hot_path.py, tests/test_keep_alive.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from api.http_protocol import OpenAIErrorsHTTPProtocol
from broker.cli.embedded_redis import free_port

WRITES: list[bytes] = []  # every transport write of the server, in order
STREAM_GO = threading.Event()  # the stream's first chunk waits for this


class RecordingTransport:
    """The connection's transport (uvloop's, as the API runs), each write recorded on its way to it.
    uvloop sends a `writelines` in one writev syscall (checked with strace: a 300 B head and a 200 KB body
    went as one writev of 200,300 bytes), so it counts as one write."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        WRITES.append(bytes(data))
        self.transport.write(data)

    def writelines(self, parts: Any) -> None:  # one send (uvloop: one writev), recorded as one write
        parts = [bytes(part) for part in parts]
        WRITES.append(b"".join(parts))
        self.transport.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class RecordingProtocol(OpenAIErrorsHTTPProtocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(RecordingTransport(transport))  # type: ignore[arg-type]


async def plain(request: Request) -> Response:
    body = await request.body()
    return Response(b'{"echo":' + str(len(body)).encode() + b"}", media_type="application/json")


async def big(request: Request) -> Response:
    return Response(bytes(range(256)) * 8192, media_type="application/octet-stream")  # 2 MiB


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        while not STREAM_GO.is_set():
            await asyncio.sleep(0.01)
        yield b"data: one\n\n"
        yield b"data: two\n\n"
    return StreamingResponse(chunks(), media_type="text/event-stream")


APP = Starlette(routes=[Route("/plain", plain, methods=["GET", "HEAD", "POST"]), Route("/stream", stream),
                    Route("/big", big)])


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(APP, host="127.0.0.1", port=port, http=RecordingProtocol,
                                           lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def conn(port: int) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        WRITES.clear()
        yield conn


def _read_answer(conn: socket.socket, buffered: bytes = b"", head_only: bool = False) -> tuple[bytes, bytes, bytes]:
    """(head, body, what was read past it) of one Content-Length answer."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"closed before the head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0 if head_only else next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk, "closed mid-body"
        rest += chunk
    return head, rest[:length], rest[length:]


def _get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def _settled(count: int) -> None:
    deadline = time.monotonic() + 2
    while len(WRITES) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # and nothing more comes


def test_a_plain_answer_is_one_write_and_the_connection_stays_open(conn: socket.socket) -> None:
    for n in range(3):
        conn.sendall(_get("/plain"))
        head, body, rest = _read_answer(conn)
        assert head.startswith(b"HTTP/1.1 200 OK") and body == b'{"echo":0}' and rest == b""
        _settled(n + 1)
        assert len(WRITES) == n + 1, WRITES  # head and body in one
        assert WRITES[n] == head + b"\r\n\r\n" + body


def test_a_large_answer_is_one_write_too_and_arrives_whole(conn: socket.socket) -> None:
    conn.sendall(_get("/big"))
    head, body, _ = _read_answer(conn)
    assert b"content-length: 2097152" in head.lower() and body == bytes(range(256)) * 8192
    _settled(1)
    assert len(WRITES) == 1 and len(WRITES[0]) == len(head) + 4 + len(body)


def test_pipelined_requests_get_one_write_each_in_order(conn: socket.socket) -> None:
    conn.sendall(_get("/plain") + b"POST /plain HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello" + _get("/plain"))
    rest = b""
    bodies = []
    for _ in range(3):
        _, body, rest = _read_answer(conn, rest)
        bodies.append(body)
    assert bodies == [b'{"echo":0}', b'{"echo":5}', b'{"echo":0}']
    _settled(3)
    assert len(WRITES) == 3, WRITES


def test_connection_close_answers_in_one_write_then_closes(conn: socket.socket) -> None:
    conn.sendall(_get("/plain", extra="Connection: close\r\n"))
    head, body, rest = _read_answer(conn)
    assert b"\r\nconnection: close" in head.lower() and body == b'{"echo":0}'
    assert rest == b"" and conn.recv(65536) == b""  # closed after the answer, not before
    assert len(WRITES) == 1, WRITES


def test_head_sends_the_head_alone_and_keeps_the_connection(conn: socket.socket) -> None:
    conn.sendall(_get("/plain", method="HEAD"))
    head, _, rest = _read_answer(conn, head_only=True)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 10" in head.lower() and rest == b""
    conn.sendall(_get("/plain"))
    _, body, _ = _read_answer(conn)
    assert body == b'{"echo":0}'
    _settled(2)
    assert len(WRITES) == 2 and WRITES[0].endswith(b"\r\n\r\n"), WRITES


def test_expect_100_continue_is_answered_before_the_body_is_sent(conn: socket.socket) -> None:
    conn.sendall(b"POST /plain HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    interim = b""
    while b"\r\n\r\n" not in interim:
        chunk = conn.recv(65536)
        assert chunk
        interim += chunk
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.sendall(b"abc")
    head, body, _ = _read_answer(conn)
    assert head.startswith(b"HTTP/1.1 200") and body == b'{"echo":3}'
    _settled(2)
    assert len(WRITES) == 2, WRITES  # the interim answer, then the answer in one


def test_a_streams_head_is_not_held_for_its_first_chunk(conn: socket.socket) -> None:
    STREAM_GO.clear()
    conn.sendall(_get("/stream"))
    head = b""
    while b"\r\n\r\n" not in head:  # while the stream still waits for its first chunk
        chunk = conn.recv(65536)
        assert chunk
        head += chunk
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    STREAM_GO.set()
    rest = b""
    while not rest.endswith(b"0\r\n\r\n"):
        chunk = conn.recv(65536)
        assert chunk
        rest += chunk
    assert b"data: one" in rest and b"data: two" in rest
