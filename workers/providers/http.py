"""The HTTP transport every provider adapter shares: pooled keep-alive connections, mapped errors.

Why aiohttp and not httpx here: a worker calls its upstream thousands of
times a second through one pool. httpcore's pool walks every connection with a
readability syscall on each request, so its cost grows with the pool; measured
on this project's 2-core machines against the fake upstream, 64 concurrent
calls cost 3.0 ms of CPU per request with one 256-connection httpx pool
(0.85 ms at best with 16 sharded 4-connection pools) and 0.2 ms with aiohttp.
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
from yarl import URL

from broker.errors import UpstreamError, UpstreamTimeout

_JSON = {"content-type": "application/json"}


class UpstreamResponse:
    __slots__ = ("status", "headers", "_response")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self._response = response

    async def read(self) -> bytes:
        return await self._response.read()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (any slicing; SSE parsing copes with that)."""
        async for data in self._response.content.iter_any():
            yield data


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
        url = self.base_url + path
        with self._mapped_errors():
            # No redirects: following one could carry our upstream key to another host.
            async with self._client().post(
                URL(url, encoded=True) if encoded else url, data=body, timeout=self._timeout(deadline), allow_redirects=False,
                headers={"content-type": "application/json", **headers} if headers else _JSON,
            ) as response:
                yield UpstreamResponse(response)

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
        except aiohttp.ClientPayloadError:
            raise UpstreamError(f"upstream {self.name} cut the response short", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"cannot reach upstream {self.name}: {type(exc).__name__}", retryable=True
            ) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
