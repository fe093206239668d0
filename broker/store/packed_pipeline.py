"""A redis-py pipeline whose commands are packed by hiredis (C), not by redis-py's Python packer.

redis-py's asyncio connection packs every command in Python (`AbstractConnection.pack_command`:
an encode call and several joins per argument); its sync client packs with hiredis when it is
installed, its asyncio client does not (redis-py 5.x). The worker's outbox sends a pipeline per
burst of replies, and at c=64 packing it was ~8% of the worker's samples (py-spy): measured
here, a job's end (EVALSHA job_end.lua with ~20 arguments) packs in 17 µs in Python and 2.5 µs
with `hiredis.pack_command`. Same bytes on the wire: hiredis formats str as UTF-8, ints in
decimal and floats by `repr`, as redis-py's Encoder does (checked by tests/test_packed_pipeline.py).

Only packing changes: replies are read and parsed (response callbacks, errors in place with
`raise_on_error=False`) by redis-py as before. An argument hiredis refuses (None, bool: redis-py
refuses them too, with its own DataError) sends the pipeline through redis-py's packer, which
raises as it always did.
"""

from __future__ import annotations

from typing import Any

from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ResponseError


class PackedPipeline(Pipeline):
    """A non-transactional pipeline (the outbox's kind) packed by hiredis, on a connection of its
    caller's if given one (`pinned`), else on one from the pool."""

    pinned = False

    async def reset(self) -> None:
        if self.pinned:
            self.connection = None  # its caller's: not for the pool to take back
        await super().reset()  # type: ignore[no-untyped-call]

    async def _execute_pipeline(  # type: ignore[no-untyped-def]
        self, connection: Connection, commands: Any, raise_on_error: bool
    ):
        try:
            packed = b"".join([pack_command(_split(args)) for args, _ in commands])
        except TypeError:  # an argument only redis-py's packer judges (and refuses): let it
            return await super()._execute_pipeline(connection, commands, raise_on_error)
        await connection.send_packed_command(packed)
        response: list[Any] = []
        for args, options in commands:
            try:
                response.append(await self.parse_response(connection, args[0], **options))
            except ResponseError as exc:
                response.append(exc)
        if raise_on_error:
            self.raise_first_error(commands, response)
        return response


def _split(args: tuple[Any, ...]) -> tuple[Any, ...]:
    # As redis-py's packer: a command name of several words ("CONFIG GET") goes out as several arguments.
    name = args[0]
    if isinstance(name, str) and " " in name:
        return (*name.split(), *args[1:])
    return args


def packs(redis: Redis) -> bool:
    """Whether `pipeline` packs for `redis` with hiredis: one Redis (standalone or Sentinel), not a
    Cluster (redis-py's cluster pipeline routes each command to its slot's node), text in UTF-8."""
    if isinstance(redis, RedisCluster):
        return False
    encoding = str(redis.connection_pool.connection_kwargs.get("encoding", "utf-8"))
    return encoding.lower().replace("-", "") == "utf8"  # hiredis writes str as UTF-8 only


def pins(redis: Redis) -> bool:
    """Whether a single writer may keep one connection of `redis`'s for its pipelines: where it packs,
    and not under Sentinel, whose pool moves its connections to a new primary after a failover only as
    they come back to it (a connection kept out of it would go on writing to the old primary)."""
    return packs(redis) and not isinstance(redis.connection_pool, SentinelConnectionPool)


def pipeline(redis: Redis, connection: Connection | None = None) -> Pipeline:
    """A non-transactional pipeline on `redis`, packed by hiredis where it `packs`; on `connection`
    if given (a single writer's own: one pipeline at a time on it), which is then left to its caller."""
    if not packs(redis):
        plain: Pipeline = redis.pipeline(transaction=False)
        return plain
    pipe = PackedPipeline(redis.connection_pool, redis.response_callbacks, False, None)
    if connection is not None:
        pipe.connection, pipe.pinned = connection, True
    return pipe
