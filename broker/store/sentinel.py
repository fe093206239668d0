"""Redis behind Sentinel: a client of the primary that broker/store/sentinel_url.py's URL names.

A pool asks the sentinels which node is the primary when it opens a connection (redis-py's
`master_for`) and, while in use, every FOLLOW_EVERY_S. Once the primary has moved it drops its
connections to the old one, those in use too (pub/sub, blocking reads): their users get a
ConnectionError (a 503 from the API; the workers and the reply listener reconnect) and the next
connection goes to the new primary. Left to Sentinel, that takes some 10 s, during which the
demoted node still takes writes that its resync from the new primary then throws away.

`?socket_timeout=` (default SENTINEL_TIMEOUT_S) applies to the sentinel connections alone: the
broker's data connections wait in pub/sub and blocking reads far longer than any such timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError

from broker.store.pool import QuickCheckoutPool
from broker.store.sentinel_url import parse_sentinel_url

log = logging.getLogger(__name__)

FOLLOW_EVERY_S = 1.0  # how often a pool in use asks the sentinels whether the primary moved
# A sentinel that does not answer within this is skipped for the next: without a timeout, one
# unreachable sentinel would hold up every new connection.
SENTINEL_TIMEOUT_S = 2.0


class _SentinelPool(SentinelConnectionPool):
    """`master_for`'s pool, plus what redis-py 5.3 leaves out: following a switch of primary while
    connections are open (see the module docstring), and closing its sentinel clients."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._next_check_at = 0.0
        self._check: asyncio.Task[None] | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        now = time.monotonic()
        if now >= self._next_check_at and (self._check is None or self._check.done()):
            self._next_check_at = now + FOLLOW_EVERY_S
            # In the background: a slow or unreachable sentinel must not hold up commands.
            self._check = asyncio.create_task(self._follow_switch(), name="sentinel-follow")
        connection: AbstractConnection = await super().get_connection(*args, **kwargs)
        return connection

    async def _follow_switch(self) -> None:
        try:
            address = await self.sentinel_manager.discover_master(self.service_name)
        except RedisError:  # no sentinel answers: keep the connections that work
            return
        if self.master_address is None or address == self.master_address:
            return
        log.warning("Sentinel moved the primary of %r from %s:%s to %s:%s; reconnecting", self.service_name,
                    *self.master_address, *address)
        self.master_address = address

        def stale(connection: AbstractConnection) -> bool:
            return isinstance(connection, Connection) and (connection.host, connection.port) != address

        # No await until both lists are dealt with, so no task takes a stale connection meanwhile.
        idle = [c for c in self._available_connections if stale(c)]
        self._available_connections = [c for c in self._available_connections if not stale(c)]
        for connection in filter(stale, list(self._in_use_connections)):
            _cut(connection)
        await asyncio.gather(*(c.disconnect() for c in idle), return_exceptions=True)

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        # A primary switch disconnects idle connections only (inuse_connections=False); the sentinel
        # clients are then in use answering who the primary is, so only a full close drops them.
        if inuse_connections:
            if self._check is not None:
                self._check.cancel()
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.connection_pool.disconnect()


def _cut(connection: AbstractConnection) -> None:
    """Shut a connection in use down under its user, as Sentinel's CLIENT KILL will: the user reads
    EOF or fails to write, gets a ConnectionError, and reconnects to the new primary.

    Not disconnect(), which resets the parser under a task that may be reading, nor closing the
    transport, after which uvloop fails a write with a RuntimeError redis-py lets through. uvloop
    refuses shutdown() on its own socket object, hence the duplicate descriptor.
    """
    writer = getattr(connection, "_writer", None)  # redis-py has no public way to cut a connection
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is None:
        return
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


class _BlockingSentinelPool(_SentinelPool, QuickCheckoutPool):
    """`master_for`'s pool with BlockingConnectionPool's wait for a free connection (see
    broker/store/connection.py and broker/store/pool.py). redis-py's Sentinel pool overrides neither get_connection nor release,
    and ours defers to them, so the MRO puts the blocking ones in charge."""


def connect_sentinel(url: str, *, protocol: int, max_connections: int | None = None, **options: Any) -> Redis:
    """A client of the service's primary, speaking RESP `protocol` to sentinels and primary alike;
    `options` as for broker/store/connection.py `connect`, which passes its own protocol."""
    target = parse_sentinel_url(url)
    timeout_s = target.socket_timeout_s or SENTINEL_TIMEOUT_S
    sentinel_options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                                        "protocol": protocol}
    if target.sentinel_password is not None:
        sentinel_options["password"] = target.sentinel_password.reveal()
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    pool_class: type[SentinelConnectionPool] = _SentinelPool
    if max_connections is not None:
        pool_class, options["max_connections"] = _BlockingSentinelPool, max_connections
    password = target.password.reveal() if target.password is not None else None
    client: Redis = sentinel.master_for(
        target.service, connection_pool_class=pool_class, db=target.db, username=target.username,
        password=password, protocol=protocol, **options)
    return client
