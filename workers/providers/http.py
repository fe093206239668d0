"""The HTTP transport every provider adapter shares: pooled keep-alive connections, mapped errors.

Why not httpx here: a worker calls its upstream thousands of
times a second through one pool. httpcore's pool walks every connection with a
readability syscall on each request, so its cost grows with the pool; measured
on this project's 2-core machines against the fake upstream, 64 concurrent
calls cost 3.0 ms of CPU per request with one 256-connection httpx pool
(0.85 ms at best with 16 sharded 4-connection pools) and 0.2 ms with aiohttp.
JSON POSTs (every completion, stream and embedding) go through http1.py, a
small HTTP/1.1 client four times cheaper again than aiohttp (its docstring has
the figures); multipart uploads (`post_form`) stay on aiohttp.
httpx stays the tests' client; adapters see only this module.

Foreign exceptions are translated here, where they enter: timeouts become
`UpstreamTimeout`, connection failures `UpstreamError(retryable=True)`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Mapping

import aiohttp

from broker.errors import UpstreamError, UpstreamTimeout
from workers.providers import http1


class UpstreamResponse:
    """What adapters read of an answer: status, headers (case-insensitive), the body whole or in pieces."""

    __slots__ = ("status", "_response")

    def __init__(self, response: aiohttp.ClientResponse | http1.Response) -> None:
        self.status = response.status
        self._response = response

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers  # built when asked (errors, mostly): most answers never are

    async def read(self) -> bytes:
        return await self._response.read()

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (any slicing; SSE parsing copes with that). The client's own
        iterator, not one wrapping it: a stream takes one hop fewer per read."""
        response = self._response
        if isinstance(response, http1.Response):
            return response.iter_chunks()
        return response.content.iter_any()


class UpstreamHTTP:
    """One pooled client per provider per worker process."""

    def __init__(self, name: str, base_url: str, *, headers: Mapping[str, str], max_connections: int,
                 timeout_s: float, connect_timeout_s: float) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._pool: http1.Pool | None = None

    def _connections(self) -> http1.Pool:
        # Created lazily, as the session below: it belongs to the running event loop.
        if self._pool is None:
            self._pool = http1.Pool(self.base_url, limit=self.max_connections, fixed_headers=self.headers)
        return self._pool

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self.headers,
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections),
            )
        return self._session

    def _timeout(self, deadline: float) -> aiohttp.ClientTimeout:
        remaining = max(deadline - time.time(), 0.001)
        return aiohttp.ClientTimeout(total=min(self.timeout_s, remaining),
                                     connect=min(self.connect_timeout_s, remaining))

    @asynccontextmanager
    async def post(self, path: str, body: bytes, *, deadline: float, headers: Mapping[str, str] | None = None,
                   encoded: bool = False) -> AsyncIterator[UpstreamResponse]:
        """POST a JSON body (with this request's own `headers` beside the client's); yields the response
        with its body still unread. `encoded`: `path` is percent-encoded already and goes out byte for
        byte (yarl would otherwise decode `%3A` to `:`, and a SigV4 signature over the path would break)."""
        pool = self._connections()
        with self._mapped_errors():
            target = pool.target(path, encoded)
            # Per-request headers (an Entra token, a SigV4 signature) may replace the content type too.
            head = pool.head(target, "application/json", headers or None)
            response = await pool.request(target, head, body, total_s=http1.timeout_s(deadline, self.timeout_s),
                                          connect_s=self.connect_timeout_s)
        ok = False
        try:
            with self._mapped_errors():  # the body is read inside: a timeout or cut there maps as well
                yield UpstreamResponse(response)
            ok = True
        finally:
            response.finish(ok)

    @asynccontextmanager
    async def post_form(self, path: str, form: aiohttp.FormData, *, deadline: float,
                        headers: Mapping[str, str] | None = None) -> AsyncIterator[UpstreamResponse]:
        """POST multipart form data (an upload: aiohttp streams a file part from its file, a block at a
        time), with this request's own `headers` beside the client's; yields the response with its body
        still unread. Errors mapped as `post`'s."""
        with self._mapped_errors():
            async with self._client().post(self.base_url + path, data=form, timeout=self._timeout(deadline),
                                           allow_redirects=False, headers=headers) as response:
                yield UpstreamResponse(response)

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        """aiohttp's failures as the UpstreamErrors failover reads, naming only the upstream."""
        try:
            yield
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"upstream {self.name} timed out") from None
        except (aiohttp.ClientPayloadError, http1.PayloadError):
            raise UpstreamError(f"upstream {self.name} cut the response short", retryable=True) from None
        except (aiohttp.ClientError, OSError) as exc:  # refused, reset, TLS, http1's Disconnected...
            raise UpstreamError(
                f"cannot reach upstream {self.name}: {type(exc).__name__}", retryable=True
            ) from None

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._session is not None:
            await self._session.close()
