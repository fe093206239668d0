"""The one way the broker opens Redis: a client that speaks RESP2 whatever the library's default.

redis-py 8 switched its default to RESP3. The broker's scripts, replies and tests are built on
RESP2's reply shapes, and the embedded fakeredis of `llm-broker dev` serves RESP3 pub/sub so
slowly that a burst of 50 requests took 80 s (0.3 s on RESP2). RESP3 buys us nothing: no client
tracking, no push notifications beyond pub/sub, which RESP2 carries as well.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis

PROTOCOL = 2


def connect(url: str, *, max_connections: int | None = None, **options: Any) -> Redis:
    """A client for `url`; with `max_connections`, callers wait for a pooled connection (up to
    `timeout` s) rather than opening more."""
    if url.startswith("redis+sentinel://"):
        from broker.redis_sentinel import connect_sentinel  # here: it imports PROTOCOL from this module

        return connect_sentinel(url, max_connections=max_connections, **options)
    if max_connections is None:
        client: Redis = Redis.from_url(url, protocol=PROTOCOL, **options)
        return client
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, protocol=PROTOCOL, **options)
    return Redis(connection_pool=pool)
