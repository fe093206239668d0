"""The workers' upstream HTTP client (workers/providers/http.py over http1.py), against real servers.

The OpenAI fake (uvicorn, as a real upstream's server) for what adapters rely on: headers sent,
keep-alive reuse after whole answers and after streams read to `[DONE]`, timeouts. A raw asyncio
server for the wire shapes a real server may write and uvicorn never does: a body delimited by the
connection's end, chunks split anywhere, a connection cut inside a body or before any answer, a
redirect, bytes that are not HTTP. A TLS server with a self-signed certificate: refused untrusted,
served trusted.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from broker.errors import UpstreamError, UpstreamTimeout
from tests.fakes.openai_upstream import create_app
from tests.fakes.server import FakeServer
from workers.providers.http import UpstreamHTTP
from workers.providers.sse import SSEParser

CHAT = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM = json.dumps({"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def client(base_url: str, *, timeout_s: float = 10.0, limit: int = 8) -> UpstreamHTTP:
    return UpstreamHTTP("up", base_url, headers={"Authorization": "Bearer fake-key"}, max_connections=limit,
                        timeout_s=timeout_s, connect_timeout_s=2.0)


@pytest.fixture(scope="module")
def fake() -> AsyncIterator[FakeServer]:
    server = FakeServer(create_app(api_key="fake-key", chunks=5))
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def test_whole_answers_reuse_one_connection_and_carry_the_clients_headers(fake: FakeServer) -> None:
    async def test() -> None:
        http = client(fake.base_url)
        try:
            for _ in range(3):
                async with http.post("/chat/completions", CHAT, deadline=time.time() + 10) as resp:
                    body = json.loads(await resp.read())
                assert resp.status == 200 and body["object"] == "chat.completion"
                assert resp.headers["Content-Type"] == resp.headers["content-type"] == "application/json"
            assert http._pool is not None and http._pool.open == 1
            # A request's own headers beside the fixed ones, replacing one of them case-insensitively.
            async with http.post("/chat/completions", CHAT, deadline=time.time() + 10,
                                 headers={"X-Request-Tag": "t1", "Content-Type": "application/json; charset=utf-8"}) as resp:
                await resp.read()
            sent = fake.requests[-1].headers
            assert sent["authorization"] == "Bearer fake-key" and sent["x-request-tag"] == "t1"
            assert sent["content-type"] == "application/json; charset=utf-8"
            assert sent["host"] == f"127.0.0.1:{fake.port}" and sent["content-length"] == str(len(CHAT))
        finally:
            await http.aclose()

    run(test)


def test_an_upstream_error_keeps_its_status_headers_and_body_after_the_connection_is_reused(fake: FakeServer) -> None:
    async def test() -> None:
        http = UpstreamHTTP("up", fake.base_url, headers={"authorization": "Bearer wrong"}, max_connections=1,
                            timeout_s=10, connect_timeout_s=2)
        try:
            async with http.post("/chat/completions", CHAT, deadline=time.time() + 10) as first:
                said = await first.read()
            async with http.post("/chat/completions", CHAT, deadline=time.time() + 10) as second:
                await second.read()
            assert first.status == second.status == 401
            assert "incorrect api key" in said.decode().lower()
            assert first.headers["content-type"].startswith("application/json")
        finally:
            await http.aclose()

    run(test)


def test_a_stream_read_to_done_leaves_its_connection_for_the_next_request(fake: FakeServer) -> None:
    async def test() -> None:
        http = client(fake.base_url)
        try:
            for _ in range(3):
                events = []
                async with http.post("/chat/completions", STREAM, deadline=time.time() + 10) as resp:
                    parser = SSEParser()
                    async for raw in resp.iter_chunks():
                        events += [e.data for e in parser.feed(raw)]
                        if events and events[-1] == b"[DONE]":
                            break  # as the adapters do: the chunked body's terminator may not be in yet
                assert events[-1] == b"[DONE]" and len(events) >= 6
                await asyncio.sleep(0.05)  # the terminator arrives; the connection goes back to the pool
            assert http._pool is not None and http._pool.open == 1
        finally:
            await http.aclose()

    run(test)


def test_a_slow_upstream_times_out_at_the_limit_and_the_client_serves_the_next(fake: FakeServer) -> None:
    async def test() -> None:
        http = client(fake.base_url, timeout_s=0.3)
        try:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout, match="upstream up timed out"):
                async with http.post("/chat/completions", CHAT.replace(b"fake-model", b"slow"),
                                     deadline=time.time() + 10) as resp:
                    await resp.read()
            assert 0.25 < time.monotonic() - started < 2
            # The job's deadline, nearer than the limit, cuts a stream stalled after its first chunk.
            http.timeout_s = 10
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                async with http.post("/chat/completions", STREAM.replace(b"fake-model", b"hang-stream"),
                                     deadline=time.time() + 0.3) as resp:
                    async for _ in resp.iter_chunks():
                        pass
            assert 0.25 < time.monotonic() - started < 2
            async with http.post("/chat/completions", CHAT, deadline=time.time() + 10) as resp:
                assert resp.status == 200 and await resp.read()
        finally:
            await http.aclose()

    run(test)


# ---------------------------------------------------------------- raw servers: wire shapes


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[tuple[str, list[int]]]:
    """A server answering each request on a connection with `answer`; yields its URL and a count of
    the connections it accepted."""
    accepted = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                await answer(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", accepted
    finally:
        server.close()


async def post(url: str, *, stream: bool = False) -> tuple[int, bytes]:
    http = client(url)
    try:
        async with http.post("/chat/completions", CHAT, deadline=time.time() + 5) as resp:
            if stream:
                return resp.status, b"".join([piece async for piece in resp.iter_chunks()])
            return resp.status, await resp.read()
    finally:
        await http.aclose()


def test_bodies_by_length_by_chunks_split_anywhere_and_by_the_connections_end() -> None:
    body = b'{"answer": "' + b"x" * 3000 + b'"}'

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        wire = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (1000, body[:1000])
                + b"%x\r\n%s\r\n" % (len(body) - 1000, body[1000:]) + b"0\r\n\r\n")
        for i in range(0, len(wire), 7):  # a slice of 7 bytes at a time: sizes and CRLFs split anywhere
            writer.write(wire[i:i + 7])
            await writer.drain()

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    async def test() -> None:
        for answer in (chunked, until_close):
            async with raw_server(answer) as (url, _):
                assert await post(url) == (200, body)
                assert await post(url, stream=True) == (200, body)

    run(test)


def test_a_large_body_read_slowly_arrives_whole() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: reading pauses past its high-water mark and resumes

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    async def test() -> None:
        async with raw_server(big) as (url, _):
            http = client(url)
            try:
                async with http.post("/chat/completions", CHAT, deadline=time.time() + 10) as resp:
                    pieces = []
                    async for piece in resp.iter_chunks():
                        pieces.append(piece)
                        await asyncio.sleep(0)
                assert b"".join(pieces) == body
                async with http.post("/chat/completions", CHAT, deadline=time.time() + 10) as resp:
                    assert await resp.read() == body
            finally:
                await http.aclose()

    run(test)


def test_keep_alive_unless_the_server_says_close_or_closes_while_idle() -> None:
    closes = {"next": False}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if closes["next"]:
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
            writer.close()
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")

    async def test() -> None:
        async with raw_server(answer) as (url, accepted):
            http = client(url)
            try:
                for _ in range(3):
                    async with http.post("/x", CHAT, deadline=time.time() + 5) as resp:
                        assert await resp.read() == b"{}"
                assert accepted[0] == 1
                closes["next"] = True
                for _ in range(2):
                    async with http.post("/x", CHAT, deadline=time.time() + 5) as resp:
                        assert await resp.read() == b"{}"
                assert accepted[0] == 2  # the first `close` answer came on the kept connection
                closes["next"] = False
                async with http.post("/x", CHAT, deadline=time.time() + 5) as resp:
                    assert await resp.read() == b"{}"
                assert accepted[0] == 3
            finally:
                await http.aclose()

    run(test)


def test_a_redirect_is_answered_as_is_never_followed() -> None:
    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://elsewhere.invalid/\r\n"
                     b"content-length: 0\r\n\r\n")

    async def test() -> None:
        async with raw_server(redirect) as (url, accepted):
            assert await post(url) == (307, b"")
            assert accepted[0] == 1

    run(test)


@pytest.mark.parametrize("wire, says", [
    (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"cut\":", "cut the response short"),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":", "cut the response short"),
    (b"", "cannot reach upstream up: Disconnected"),
    (b"SMTP ready\r\n\r\n", "cannot reach upstream up: InvalidResponse"),
], ids=["inside-length", "inside-chunks", "no-answer", "not-http"])
def test_a_broken_answer_is_a_retryable_upstream_error(wire: bytes, says: str) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(wire)
        await writer.drain()
        writer.close()

    async def test() -> None:
        async with raw_server(broken) as (url, _):
            for stream in (False, True):
                with pytest.raises(UpstreamError, match=says) as info:
                    await post(url, stream=stream)
                assert info.value.retryable

    run(test)


def test_nobody_listening_is_a_retryable_upstream_error() -> None:
    async def test() -> None:
        async with raw_server(lambda r, w: asyncio.sleep(0)) as (url, _):
            pass  # closed: its port refuses
        with pytest.raises(UpstreamError, match="cannot reach upstream up") as info:
            await post(url)
        assert info.value.retryable

    run(test)


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl's command line: no Python package needed)."""
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


@asynccontextmanager
async def tls_server(cert: str, key: str) -> AsyncIterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            body = await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()


def test_https_verifies_the_upstreams_certificate(tls_cert: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tls_cert

    async def test() -> None:
        async with tls_server(cert, key) as url:
            # Not trusted: refused before a byte of the request (and its key) is sent.
            with pytest.raises(UpstreamError, match="cannot reach upstream up: SSLCertVerificationError"):
                await post(url)
            # Trusted (OpenSSL reads SSL_CERT_FILE for its default store): the request goes over TLS.
            monkeypatch.setenv("SSL_CERT_FILE", cert)
            assert await post(url) == (200, CHAT)

    run(test)
