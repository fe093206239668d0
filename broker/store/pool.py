"""redis-py's BlockingConnectionPool, with a checkout that costs nothing when a connection is free.

Its `get_connection` takes an asyncio.Condition, arms an asyncio timeout (a timer on the loop's heap,
then cancelled) and, once it has a connection, probes it by reading the socket under a zero timeout
(`can_read_destructive`), which also waits out one loop iteration. At c=64 that was 6-7% of the API's
samples (py-spy, issue 22), on every command.

Here, when a connection is idle and no task waits for one, checking out is a pop, and the probe is made
on what the event loop already knows: an idle connection's stream reader has been reading all along, so
a server that closed the connection (Redis restarted, a Sentinel CLIENT KILL) has left EOF or an error
on it, and bytes nobody asked for sit in its buffer. Either sends the connection through redis-py's own
probe, which reconnects it; so does anything this cannot see (a connection class without a stream
reader). What the zero-timeout read could see and this cannot is a FIN that arrived during the very
loop iteration of the checkout: the same race the probe leaves for a FIN one iteration later.

When the pool is exhausted, or tasks already wait, redis-py's own path runs unchanged, with its
timeout and its order: a waiter is never overtaken by a newcomer taking the fast path.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import AbstractConnection

from broker.store.packing import packed_by_hiredis


class QuickCheckoutPool(BlockingConnectionPool):
    """Its connections also pack their commands with hiredis (broker/store/packing.py)."""

    _waiting = 0  # tasks inside redis-py's blocking checkout

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection_class = packed_by_hiredis(self.connection_class)

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if not self._available_connections or self._waiting:
            self._waiting += 1
            try:
                connection: AbstractConnection = await super().get_connection(*args, **kwargs)
                return connection
            finally:
                self._waiting -= 1
        connection = self._available_connections.pop()
        self._in_use_connections.add(connection)
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        if not _idle_and_sound(connection):
            await super().ensure_connection(connection)

    async def release(self, connection: AbstractConnection) -> None:
        if self._waiting:  # someone waits on the condition: redis-py's release notifies them
            await super().release(connection)
        else:  # ConnectionPool's release, without the condition nobody waits on
            await super(BlockingConnectionPool, self).release(connection)


def _idle_and_sound(connection: AbstractConnection) -> bool:
    """Connected, nothing unread, no EOF or error from the server: what redis-py's probe checks, as the
    connection's asyncio stream already holds it. redis-py keeps the stream in `_reader`/`_writer` and
    reads `_reader._buffer` itself (`_socket_is_empty`); without them, False: the probe runs."""
    reader, writer = getattr(connection, "_reader", None), getattr(connection, "_writer", None)
    if reader is None or writer is None:
        return False
    buffer = getattr(reader, "_buffer", None)
    return (buffer is not None and not buffer and not reader.at_eof() and reader.exception() is None
            and not writer.is_closing())
