"""broker/store/pool.py against a real Redis of the test's own: a free connection is checked out without
redis-py's probe, yet a connection the server dropped while idle (CLIENT KILL, a restart) is found dead
and replaced before a command is sent on it; an exhausted pool still waits, in order, and times out.
And broker/store/packing.py: its connections' commands, packed by hiredis, are redis-py's bytes."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import ConnectionError, DataError

from broker.store.connection import connect
from broker.store.packing import pack
from broker.store.pool import QuickCheckoutPool
from tests.harness import RedisServer


async def _settle() -> None:
    await asyncio.sleep(0.05)  # the loop reads what the server sent (EOF) on the idle connection


async def test_a_sound_idle_connection_is_reused_without_a_probe(own_redis: RedisServer) -> None:
    client = connect(own_redis.url, max_connections=4, timeout=1)
    pool = client.connection_pool
    assert isinstance(pool, QuickCheckoutPool)
    probes = 0
    original = AbstractConnection.can_read_destructive

    async def counted(self: AbstractConnection) -> bool:
        nonlocal probes
        probes += 1
        return await original(self)

    AbstractConnection.can_read_destructive = counted  # type: ignore[method-assign]
    try:
        ids = {await client.client_id() for _ in range(20)}
    finally:
        AbstractConnection.can_read_destructive = original  # type: ignore[method-assign]
        await client.aclose()
    assert len(ids) == 1  # one connection, reused
    assert probes == 1  # at its first checkout, not yet connected: redis-py's own path connects it


async def test_a_connection_the_server_killed_while_idle_is_replaced(own_redis: RedisServer) -> None:
    client = connect(own_redis.url, max_connections=4, timeout=1)
    other = redis.asyncio.Redis.from_url(own_redis.url)
    try:
        first = await client.client_id()
        assert await other.client_kill_filter(_id=first) == 1
        await _settle()
        second = await client.client_id()  # no ConnectionError: found dead at checkout, reconnected
        assert second != first
        assert await client.set("k", "v") and await client.get("k") == b"v"
    finally:
        await client.aclose()
        await other.aclose()


async def test_a_restart_of_redis_costs_no_failed_command(own_redis: RedisServer) -> None:
    client = connect(own_redis.url, max_connections=4, timeout=1)
    try:
        await asyncio.gather(*(client.ping() for _ in range(4)))  # four idle connections
        own_redis.kill()
        own_redis.start()
        await _settle()
        assert all(await asyncio.gather(*(client.ping() for _ in range(8))))
    finally:
        await client.aclose()


async def test_an_exhausted_pool_waits_and_times_out(own_redis: RedisServer) -> None:
    client = connect(own_redis.url, max_connections=2, timeout=5)
    try:
        # Ten commands on two connections: the eight beyond them wait their turn and are all served.
        results = await asyncio.gather(*(client.blpop(["empty"], timeout=0.02) for _ in range(10)))
        assert results == [None] * 10
        pool = client.connection_pool
        assert len(pool._in_use_connections) == 0 and len(pool._available_connections) == 2  # type: ignore[attr-defined]
    finally:
        await client.aclose()
    client = connect(own_redis.url, max_connections=2, timeout=0.3)
    try:
        # Both connections held past the timeout: the next checkout gives up as redis-py's does.
        blocked = asyncio.gather(*(client.blpop(["empty"], timeout=1) for _ in range(2)))
        await asyncio.sleep(0.1)
        with pytest.raises(ConnectionError, match="No connection available"):
            await client.ping()
        await blocked
        assert await client.ping()
    finally:
        await client.aclose()


ARGS = ("é", b"\x00\xff", 3, -7, 10**20, 1.5, 0.1, 1e-7, float("inf"), memoryview(b"view"), b"x" * 100_000)


def test_hiredis_packs_the_bytes_redis_py_packs() -> None:
    reference = Connection()  # redis-py's own Python packer
    for command in [("EVALSHA", "abc", 2, "k1", b"k2", *ARGS), ("CONFIG GET", "maxmemory"), (b"SET", "a", "b")]:
        assert b"".join(pack(*command)) == b"".join(bytes(part) for part in reference.pack_command(*command))
    with pytest.raises(DataError):  # a type neither accepts: redis-py's error, not hiredis's TypeError
        pack("SET", "a", object())


async def test_commands_and_pipelines_packed_by_hiredis_reach_redis_intact(own_redis: RedisServer) -> None:
    client = connect(own_redis.url, max_connections=2, timeout=1)
    try:
        connection = await client.connection_pool.get_connection()
        assert type(connection).pack_command is not Connection.pack_command  # the hiredis packer is in use
        await client.connection_pool.release(connection)
        echoed = await client.eval("return ARGV", 0, *ARGS)
        expected = [bytes(a) if isinstance(a, (bytes, memoryview)) else str(a).encode() if isinstance(a, str)
                    else repr(a).encode() for a in ARGS]
        assert echoed == expected
        async with client.pipeline(transaction=True) as pipe:
            pipe.set("k", "é").get("k").rpush("l", *ARGS[:3]).lrange("l", 0, -1)
            assert await pipe.execute() == [True, "é".encode(), 3, expected[:3]]
        with pytest.raises(DataError):
            await client.set("k", True)  # type: ignore[arg-type]
    finally:
        await client.aclose()
    unpooled = connect(own_redis.url)  # the workers' kind of client: redis-py's plain pool, packed by hiredis too
    try:
        assert unpooled.connection_pool.connection_class.pack_command is not Connection.pack_command
        async with unpooled.pipeline(transaction=False) as pipe:
            pipe.eval("return ARGV", 0, *ARGS).publish("channel", ARGS[-1])
            assert await pipe.execute() == [expected, 0]
    finally:
        await unpooled.aclose()
