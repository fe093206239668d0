"""The outbox's pipeline packed by hiredis (broker/store/packed_pipeline.py) sends what redis-py's would.

Against the tests' real Redis: the same bytes on the wire for every argument type the outbox sends,
the same replies (callbacks applied, errors in place), and redis-py's own refusal of an argument it
cannot encode.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError, NoScriptError, ResponseError

from broker.store.packed_pipeline import PackedPipeline, pipeline
from tests.harness import REDIS_URL

ARGUMENTS = [
    ("EVALSHA", "0" * 40, 2, "k:é", b"k\x00raw", 1.5, 0.1, 1 / 3, -7, 2**70, "", b""),
    ("SET", "a key", "a value with spaces", "EX", 60),
    ("XADD", "s", "MAXLEN", "~", 100, "*", "r", b"\xff\xfe"),
]


@pytest.mark.parametrize("args", ARGUMENTS)
def test_hiredis_packs_the_bytes_redis_py_packs(args: tuple[object, ...]) -> None:
    assert pack_command(args) == b"".join(Connection().pack_command(*args))


def test_replies_match_redis_pys_pipeline() -> None:
    async def run() -> None:
        redis = Redis.from_url(REDIS_URL)
        key = f"t-packed-{uuid.uuid4().hex}"
        try:
            results = []
            for pipe in (pipeline(redis), redis.pipeline(transaction=False)):
                pipe.set(key, "v", ex=60)
                pipe.get(key)
                pipe.lpush(key, "x")  # WRONGTYPE: an error in its place
                pipe.execute_command("EVALSHA", "0" * 40, 1, key)  # NOSCRIPT, as after a Redis restart
                pipe.incrbyfloat(key + ":f", 0.25)
                pipe.expire(key + ":f", 60)
                pipe.xadd(key + ":s", {"r": b"\xff"}, maxlen=10, approximate=False)
                pipe.expire(key + ":s", 60)
                pipe.delete(key)
                results.append(await pipe.execute(raise_on_error=False))
            assert isinstance(pipeline(redis), PackedPipeline)
            packed, plain = results
            assert packed[:2] == plain[:2] == [True, b"v"]
            assert isinstance(packed[2], ResponseError) and str(packed[2]) == str(plain[2])
            assert isinstance(packed[3], NoScriptError) and isinstance(plain[3], NoScriptError)
            assert packed[4] == 0.25 and plain[4] == 0.5  # the second pipeline added to the first's
            assert isinstance(packed[6], bytes) and packed[6] != plain[6]  # two entries, two ids
            assert packed[5] == packed[7] == packed[8] == plain[8] == 1

            pipe = pipeline(redis)
            pipe.set(key, "v")
            pipe.lpush(key, "x")
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await pipe.execute()  # raise_on_error, as redis-py's
        finally:
            await redis.delete(key, key + ":f", key + ":s")
            await redis.aclose()

    asyncio.run(run())


def test_an_argument_redis_py_refuses_is_refused_as_before() -> None:
    async def run() -> None:
        redis = Redis.from_url(REDIS_URL)
        try:
            pipe = pipeline(redis)
            pipe.execute_command("SET", "k", None)
            with pytest.raises(DataError):
                await pipe.execute()
        finally:
            await redis.aclose()

    asyncio.run(run())


def test_a_pinned_connection_serves_every_pipeline_and_survives_a_broken_socket() -> None:
    async def run() -> None:
        redis = Redis.from_url(REDIS_URL)
        key = f"t-packed-{uuid.uuid4().hex}"
        try:
            connection = await redis.connection_pool.get_connection()
            for n in range(3):
                pipe = pipeline(redis, connection)
                pipe.incr(key)
                pipe.expire(key, 60)
                assert await pipe.execute() == [n + 1, True]
                assert pipe.connection is None  # reset, and not handed back to the pool:
                assert connection not in redis.connection_pool._available_connections  # type: ignore[attr-defined]
            await connection.disconnect()  # as after a Redis restart: the next pipeline reconnects
            pipe = pipeline(redis, connection)
            pipe.incr(key)
            assert await pipe.execute() == [4]
            await redis.connection_pool.release(connection)
        finally:
            await redis.delete(key)
            await redis.aclose()

    asyncio.run(run())
