"""A pipeline on a writer's own connection (broker/store/pinned_pipeline.py), against the tests' real
Redis: the same replies as redis-py's pipeline (callbacks applied, errors in place), every pipeline on
the one connection, which survives a broken socket. The packing is broker/store/packing.py's
(tests/test_redis_pool.py)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from broker.store.connection import connect
from broker.store.pinned_pipeline import PinnedPipeline, pipeline
from tests.harness import REDIS_URL


def test_replies_match_redis_pys_pipeline() -> None:
    async def run() -> None:
        redis = connect(REDIS_URL, max_connections=4)  # as the worker's: packed by hiredis
        plain_redis = Redis.from_url(REDIS_URL)  # redis-py's own packer and pool
        key = f"t-pinned-{uuid.uuid4().hex}"
        connection = await redis.connection_pool.get_connection()
        try:
            results = []
            for pipe in (pipeline(redis, connection), plain_redis.pipeline(transaction=False)):
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
            assert isinstance(pipeline(redis, connection), PinnedPipeline)
            packed, plain = results
            assert packed[:2] == plain[:2] == [True, b"v"]
            assert isinstance(packed[2], ResponseError) and str(packed[2]) == str(plain[2])
            assert isinstance(packed[3], NoScriptError) and isinstance(plain[3], NoScriptError)
            assert packed[4] == 0.25 and plain[4] == 0.5  # the second pipeline added to the first's
            assert isinstance(packed[6], bytes) and packed[6] != plain[6]  # two entries, two ids
            assert packed[5] == packed[7] == packed[8] == plain[8] == 1

            pipe = pipeline(redis, connection)
            pipe.set(key, "v")
            pipe.lpush(key, "x")
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await pipe.execute()  # raise_on_error, as redis-py's
        finally:
            await redis.connection_pool.release(connection)
            await redis.delete(key, key + ":f", key + ":s")
            await redis.aclose()
            await plain_redis.aclose()

    asyncio.run(run())


def test_a_pinned_connection_serves_every_pipeline_and_survives_a_broken_socket() -> None:
    async def run() -> None:
        redis = Redis.from_url(REDIS_URL)
        key = f"t-pinned-{uuid.uuid4().hex}"
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
