"""`server.keep_alive_s`: the API keeps an idle keep-alive connection open past the clients' own idle
expiry (httpx's, so the OpenAI and Anthropic SDKs': 5 s), so that no client sends a request on a
connection the server is closing at that instant; and it does close one idle for longer than the
setting. Both over one raw TCP connection to a real API process, so that "the same connection" is
certain (a pool would open a new one without saying)."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from tests.harness import TEST_KEY
from tests.stacks import StackFactory

PROVIDERS = {"mock": {"kind": "mock"}}
MODELS = {"m": [{"provider": "mock", "model": "m"}]}


def _request(base_url: str) -> bytes:
    host = urlsplit(base_url).netloc
    return (f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TEST_KEY}\r\n"
            "Connection: keep-alive\r\n\r\n").encode()


def _answer(conn: socket.socket) -> bytes:
    """One whole response (headers and a Content-Length body), or b"" if the server closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return head


def _connect(base_url: str) -> socket.socket:
    netloc = urlsplit(base_url)
    return socket.create_connection((netloc.hostname or "127.0.0.1", netloc.port or 80), timeout=10)


def test_an_idle_connection_outlives_the_clients_expiry_and_not_the_setting(stack_factory: StackFactory) -> None:
    stack = stack_factory(PROVIDERS, MODELS)  # the default, 75 s
    base_url = stack.up("mock")
    with _connect(base_url) as conn:
        conn.sendall(_request(base_url))
        assert _answer(conn).startswith(b"HTTP/1.1 200")
        time.sleep(6.0)  # past httpx's keepalive_expiry (5 s) and uvicorn's own default (5 s)
        conn.sendall(_request(base_url))
        head = _answer(conn)
        assert head.startswith(b"HTTP/1.1 200"), head  # the same connection, still served

    short = stack_factory(PROVIDERS, MODELS, server={"keep_alive_s": 1})
    short_url = short.up("mock")
    with _connect(short_url) as conn:
        conn.sendall(_request(short_url))
        assert _answer(conn).startswith(b"HTTP/1.1 200")
        time.sleep(2.5)
        assert conn.recv(1) == b""  # the server closed it once idle past keep_alive_s
