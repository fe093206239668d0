"""A non-transactional pipeline on a connection its single writer keeps, not one checked out per call.

The worker's outbox sends a pipeline per burst of replies and its pull loop a script per pull: a
pool checkout and check-in around each (redis-py's pool lock, its socket probe) cost more than the
command packing once did. A writer that never runs two pipelines at once may keep one connection
of the pool for itself (`pins`) and hand it to each `pipeline`; commands are packed by hiredis as on
every connection `connect` makes (broker/store/packing.py).
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import SentinelConnectionPool


class PinnedPipeline(Pipeline):
    """A pipeline on its caller's connection, which `reset` leaves to the caller (not to the pool)."""

    async def reset(self) -> None:
        self.connection = None  # its caller's: not for the pool to take back
        await super().reset()  # type: ignore[no-untyped-call]


def pins(redis: Redis) -> bool:
    """Whether a single writer may keep one connection of `redis`'s for its pipelines: one Redis, not a
    Cluster (redis-py's cluster pipeline routes each command to its slot's node), and not under
    Sentinel, whose pool moves its connections to a new primary after a failover only as they come back
    to it (a connection kept out of it would go on writing to the old primary)."""
    return not isinstance(redis, RedisCluster) and not isinstance(redis.connection_pool, SentinelConnectionPool)


def pipeline(redis: Redis, connection: Connection | None = None) -> Pipeline:
    """A non-transactional pipeline on `redis`; on `connection` if given (a single writer's own, where it
    `pins`: one pipeline at a time on it), which is then left to its caller."""
    if connection is None:
        plain: Pipeline = redis.pipeline(transaction=False)
        return plain
    pipe = PinnedPipeline(redis.connection_pool, redis.response_callbacks, False, None)
    pipe.connection = connection
    return pipe
