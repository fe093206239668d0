"""A small HTTP/1.1 client for the upstream POSTs: keep-alive connections, one request each at a time.

Why not aiohttp for this: a worker's CPU per request is mostly fixed costs, and aiohttp's per-request
machinery (ClientRequest/ClientResponse objects, tracing hooks, header multidicts, payload registry,
a timer context, a StreamReader) was ~21% of a worker's samples at c=64 (py-spy). Measured on this
project's 2-core box against the fake upstream, one POST and its read cost 95 µs of CPU with aiohttp
(session headers, a shared ClientTimeout, a prebuilt URL: the cheapest way to call it) and 22-27 µs
here at c=64; 175 µs and 25 µs at c=1. What is left is what the request is: one write, the
response parsed by llhttp (httptools, uvicorn's parser), one timer for its timeout.

What it does, no more: POST a body with Content-Length to one origin (http or https), parse the
response (Content-Length, chunked, or read until close), reuse the connection when the response
allows it. It follows no redirects (as `allow_redirects=False`: one could carry our key to another
host), reads no proxy from the environment (as aiohttp's default `trust_env=False`), and asks for no
compression (no Accept-Encoding: the body arrives as sent, nothing to inflate). Multipart uploads
stay on aiohttp (workers/providers/http.py `post_form`): rare, large, and streamed from a file.

A request's time limit covers connecting, sending and reading the whole body, as aiohttp's `total`
timeout does; past it the connection is aborted and the caller sees `TimeoutError`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# A connection idle longer than this is closed rather than reused: servers drop idle keep-alive
# connections after a while (uvicorn: 5 s, nginx: 75 s), and a request sent as one closes is lost.
# aiohttp's default keepalive_timeout is 15 s; a server that closes first is noticed (connection_lost).
IDLE_S = 15.0
# Reading pauses while this much of a body is buffered unread (a slow consumer of a large body).
HIGH_WATER = 256 * 1024
# An answer its caller stopped reading before its end (an SSE stream's terminator after `[DONE]`) may
# finish arriving within this long; the connection is then kept, else closed.
LINGER_S = 1.0


class Disconnected(ConnectionError):
    """The server closed the connection before the response's end (aiohttp: ServerDisconnectedError)."""


class PayloadError(ConnectionError):
    """The connection ended inside the body (aiohttp: ClientPayloadError): the answer is cut short."""


class InvalidResponse(ConnectionError):
    """Bytes that are not an HTTP/1.x response."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the response being read on it."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.keep_alive = False
        self.complete = False
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.lingering = False

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(InvalidResponse(f"invalid HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pool.discard(self)
        if self.complete or self.error is not None:
            return
        if self.headers_done and self._until_close():
            self.on_message_complete()  # a body delimited by the connection's end (RFC 9112 §6.3)
            return
        self._fail(PayloadError("connection closed inside the body") if self.headers_done
                   else Disconnected("server disconnected"))

    def pause_writing(self) -> None:  # a request body larger than the socket's buffer: nothing to do
        pass

    def resume_writing(self) -> None:
        pass

    # ---- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # llhttp knows it here, not after the body
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.lingering:  # its reader had left: the connection serves the next request
            self._release()
        else:
            self._wake()

    # ---- the request's side

    def _until_close(self) -> bool:
        names = {name.lower() for name, _ in self.raw_headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    def timed_out(self) -> None:
        self.timer = None
        if self.lingering:
            self.close()
        else:
            self._fail(TimeoutError())

    async def wait(self) -> None:
        """Until the parser has more for the reader (headers, body, the end) or the request failed."""
        if self.error is not None:
            raise self.error
        self.waiter = self.pool.loop.create_future()
        await self.waiter
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        data = self.body.popleft()
        self.buffered -= len(data)
        if self.paused and self.buffered <= HIGH_WATER // 4 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def finish(self, ok: bool) -> None:
        """The caller is done with the response: keep the connection if it can serve another."""
        if self.timer is not None and (self.complete or not ok):
            self.timer.cancel()
            self.timer = None
        if not ok or self.error is not None or self.lost:
            self.close()
        elif self.complete:
            self._release()
        else:  # the rest of the body may be on its way: give it a moment, then the pool has it
            self.lingering = True
            self.body.clear()
            self.buffered = 0
            if self.paused and self.transport is not None:
                self.paused = False
                self.transport.resume_reading()
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.pool.loop.call_later(LINGER_S, self.timed_out)

    def _release(self) -> None:
        if not self.keep_alive or self.lost:
            self.close()
            return
        self._reset()
        self.pool.put(self)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self.pool.discard(self)


class Response:
    """A response whose headers have arrived; its body is read with `read` or `iter_chunks`."""

    __slots__ = ("status", "_conn", "_raw", "_headers")

    def __init__(self, conn: _Connection) -> None:
        self.status = conn.status
        self._conn = conn
        self._raw = conn.raw_headers  # its own list: read after the connection went back to the pool
        self._headers: CIMultiDictProxy[str] | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive, built on first use (most answers are never asked)."""
        if self._headers is None:
            self._headers = CIMultiDictProxy(CIMultiDict(
                (name.decode("latin-1"), value.decode("latin-1")) for name, value in self._raw))
        return self._headers

    def finish(self, ok: bool) -> None:
        """Done with it: `ok` (read through, or left early on purpose) keeps the connection if it can."""
        self._conn.finish(ok)

    async def read(self) -> bytes:
        conn, parts = self._conn, []
        while True:
            while conn.body:
                parts.append(conn.take())  # resumes reading paused at HIGH_WATER
            if conn.complete:
                return b"".join(parts)
            await conn.wait()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.body:
                yield conn.take()
            elif conn.complete:
                return
            else:
                await conn.wait()


class Pool:
    """Keep-alive connections to one origin, at most `limit` open at once."""

    def __init__(self, base_url: str, *, limit: int, fixed_headers: Mapping[str, str]) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.loop = asyncio.get_running_loop()
        self.host = url.raw_host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if url.scheme == "https" else None
        self.base_url = base_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if url.is_default_port() else f"{host}:{self.port}"
        self.fixed = {"host": authority, "accept": "*/*", "user-agent": "llm-broker",
                      **{name.lower(): value for name, value in fixed_headers.items()}}
        self.limit = limit
        self.open = 0
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._queue: deque[asyncio.Future[None]] = deque()
        self._targets: dict[tuple[str, bool], bytes] = {}
        self._heads: dict[tuple[bytes, tuple[tuple[str, str], ...]], bytes] = {}

    def target(self, path: str, encoded: bool) -> bytes:
        """The request target for `path` under the base URL: percent-encoded by yarl unless `encoded`
        (sent byte for byte then: a SigV4 signature covers it as written)."""
        cached = self._targets.get((path, encoded))
        if cached is None:
            url = URL(self.base_url + path, encoded=encoded)
            cached = (url.raw_path or "/").encode("ascii") + (b"?" + url.raw_query_string.encode("ascii")
                                                              if url.raw_query_string else b"")
            if len(self._targets) > 4096:  # paths name models: a handful in practice
                self._targets.clear()
            self._targets[(path, encoded)] = cached
        return cached

    def head(self, target: bytes, content_type: str, extra: Mapping[str, str] | None) -> bytes:
        """The request line and headers up to Content-Length, cached for the fixed ones."""
        key = (target, (("content-type", content_type),) if extra is None else
               (("content-type", content_type), *((k.lower(), v) for k, v in extra.items())))
        cached = self._heads.get(key) if extra is None else None
        if cached is not None:
            return cached
        headers = {**self.fixed, **dict(key[1])}
        lines = [b"POST " + target + b" HTTP/1.1"]
        for name, value in headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
                raise ValueError(f"invalid header {name!r}")  # never sent: it would forge headers
            lines.append(f"{name}: {value}".encode("latin-1"))
        head = b"\r\n".join(lines) + b"\r\ncontent-length: "
        if extra is None:
            self._heads[key] = head
        return head

    async def request(self, target: bytes, head: bytes, body: bytes, *, total_s: float,
                      connect_s: float) -> Response:
        """Send the POST; returns once the response's headers are in. The caller must `finish` it."""
        end = self.loop.time() + total_s
        conn = await self._acquire(min(total_s, connect_s))
        conn.timer = self.loop.call_at(end, conn.timed_out)
        try:
            assert conn.transport is not None
            conn.transport.write(b"%b%d\r\n\r\n%b" % (head, len(body), body))
            while not conn.headers_done:
                await conn.wait()
        except BaseException:
            conn.finish(False)
            raise
        return Response(conn)

    async def _acquire(self, connect_s: float) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            # Not one the server wrote to while idle (a 408 before closing): that is no answer of ours.
            if not conn.lost and now - conn.idle_since < IDLE_S and not (conn.headers_done or conn.body
                                                                            or conn.error):
                return conn
            conn.close()
        while self.open >= self.limit:
            waiter = self.loop.create_future()
            self._queue.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._queue:
                    self._queue.remove(waiter)
            if self._idle:
                return await self._acquire(connect_s)
        self.open += 1
        try:
            async with asyncio.timeout(connect_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None)
        except BaseException:
            self.open -= 1
            self._next()
            raise
        self._all.add(conn)
        return conn

    def put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        self._next()

    def discard(self, conn: _Connection) -> None:
        if conn in self._all:
            self._all.remove(conn)
            self.open -= 1
            if conn in self._idle:
                self._idle.remove(conn)
            self._next()

    def _next(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()


def timeout_s(deadline: float, limit_s: float) -> float:
    """What is left of a request's time: its limit, or less where the job's deadline (unix s) is nearer."""
    return min(limit_s, max(deadline - time.time(), 0.001))

