"""The batch worker (`llm-broker batch-worker`): arq runs the batches, in steps.

A batch is a chain of arq jobs `run_batch(batch_id, n)`, each one step of at most
batch_runner.STEP_S, enqueueing the next until the batch has ended. Short steps keep arq's own
recovery quick: a step whose worker died is re-run by arq once its job times out. A per-batch lock
keeps two steps of one batch from running at once (refreshed by the step, so a dead one frees it
within seconds), and the `resume_batches` cron starts a chain
for any active batch that has none (its continuation was lost), so a batch survives an API,
worker or batch-worker restart at any moment. Another cron sweeps expired files from the store.

The API enqueues a new batch's first step itself (`first_step`), so it starts at once.

arq's queue is on the broker's Redis, or on `batches.queue_url`: arq speaks to one Redis, so a
broker on Redis Cluster keeps arq's few keys on a standalone one (the batches' state, files and
jobs stay in the cluster).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from arq import cron
from arq.connections import ArqRedis
from arq.worker import Worker
from redis.asyncio import Redis
from redis.exceptions import RedisError

from broker.batches import files
from broker.batches import runner as batch_runner
from broker.config import Config
from broker.errors import Unavailable
from broker.keys import Keys
from broker.store import key_migration
from broker.store.connection import connect, is_cluster

log = logging.getLogger(__name__)

NO_QUEUE_ON_CLUSTER = ("Batches need `batches.queue_url` (a standalone Redis for arq's queue) when the broker's "
                       "redis_url is a Redis Cluster.")
# A step refreshes its batch's lock every round: a step whose process died frees it this soon.
LOCK_TTL_MS = 5_000
JOB_TIMEOUT_S = batch_runner.STEP_S + 30
RESUME_EVERY_S = 5  # how often active batches without a running step are started again


def queue_name(config: Config) -> str:
    return Keys(config.namespace).arq_queue()


def step_job_id(config: Config, batch_id: str, n: int | str) -> str:
    return Keys(config.namespace).batch_step(batch_id, n)


def arq_client(config: Config, redis: Redis) -> tuple[ArqRedis, bool]:
    """arq's client, and whether it has a pool of its own to close: over the broker's own connection
    pool, or on `batches.queue_url`. Raises Unavailable on a cluster without a queue_url."""
    if config.batches.queue_url:
        return ArqRedis(connect(config.batches.queue_url).connection_pool), True
    if queue_missing(config):
        raise Unavailable(NO_QUEUE_ON_CLUSTER, code="batches_unavailable")
    return ArqRedis(redis.connection_pool), False


def queue_missing(config: Config) -> bool:
    return is_cluster(config.redis_url) and not config.batches.queue_url


async def first_step(redis: Redis, config: Config, batch_id: str) -> None:
    pool, own = arq_client(config, redis)
    try:
        await pool.enqueue_job("run_batch", batch_id, 0, _job_id=step_job_id(config, batch_id, 0),
                               _queue_name=queue_name(config))
    finally:
        if own:
            await pool.aclose()


async def run_batch(ctx: dict[str, Any], batch_id: str, n: int) -> str:
    runner: batch_runner.BatchContext = ctx["batches"]
    config: Config = ctx["config"]
    lock = runner.keys.batch_lock(batch_id)
    token = secrets.token_hex(8)
    if not await runner.redis.set(lock, token, nx=True, px=LOCK_TTL_MS):
        return "another step of this batch is running"
    async def alive() -> None:
        await runner.redis.pexpire(lock, LOCK_TTL_MS)

    try:
        ended = await batch_runner.step(runner, batch_id, alive=alive)
    finally:
        if await runner.redis.get(lock) == token.encode():
            await runner.redis.delete(lock)
    if not ended:
        await ctx["redis"].enqueue_job("run_batch", batch_id, n + 1, _job_id=step_job_id(config, batch_id, n + 1),
                                       _queue_name=queue_name(config))
        return "continues"
    return "ended"


async def resume_batches(ctx: dict[str, Any]) -> None:
    """Start a chain for every active batch that is not running (no lock): its chain was lost."""
    runner: batch_runner.BatchContext = ctx["batches"]
    config: Config = ctx["config"]
    for raw in await runner.redis.zrange(runner.keys.active_batches(), 0, -1):
        batch_id = raw.decode()
        if not await runner.redis.exists(runner.keys.batch_lock(batch_id)):
            await ctx["redis"].enqueue_job("run_batch", batch_id, 0,
                                           _job_id=step_job_id(config, batch_id, f"resume-{int(time.time())}"),
                                           _queue_name=queue_name(config))


async def sweep_files(ctx: dict[str, Any]) -> None:
    runner: batch_runner.BatchContext = ctx["batches"]
    removed = await files.sweep(runner.redis, runner.keys, runner.store)
    if removed:
        log.info("removed %d expired files from the store", removed)


def worker(config: Config) -> Worker:
    redis = connect(config.redis_url)
    pool, _ = arq_client(config, redis)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["config"] = config
        ctx["batches"] = batch_runner.BatchContext(config, redis)
        await ctx["batches"].scripts.load()
        await key_migration.migrate(redis, ctx["batches"].keys, config.redis_url)  # batches in progress
        await ctx["batches"].limiter.load()

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "batches" in ctx:
            await ctx["batches"].store.aclose()
        await redis.aclose()
        if pool.connection_pool is not getattr(redis, "connection_pool", None):
            await pool.aclose()

    return Worker(
        functions=[run_batch],
        cron_jobs=[cron(resume_batches, second=set(range(0, 60, RESUME_EVERY_S)), unique=True),
                   cron(sweep_files, minute={0, 15, 30, 45}, second=5, unique=True)],
        queue_name=queue_name(config), redis_pool=pool, on_startup=startup, on_shutdown=shutdown,
        job_timeout=JOB_TIMEOUT_S, max_tries=1000, keep_result=60, max_jobs=64,
        health_check_key=Keys(config.namespace).arq_health(), handle_signals=False)


RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0)  # after losing Redis: then every 5 s, for as long as it takes


async def run(config: Config) -> None:
    """Run batches until cancelled. arq's worker stops on any Redis error, and a Sentinel failover (the
    primary killed, a replica promoted) is one: so a worker that lost Redis is closed and started again,
    which reconnects (a Sentinel URL to the new primary) and resumes the batches in progress from their
    saved state, as a restarted process would (broker/batches/runner.py)."""
    failures = 0
    while True:
        batch_worker = worker(config)
        started = time.monotonic()
        try:
            await batch_worker.async_run()
            return
        except asyncio.CancelledError:
            return
        except (RedisError, OSError) as exc:
            if time.monotonic() - started > 60:  # it had been running: a new outage starts its delays over
                failures = 0
            delay = RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)]
            failures += 1
            log.warning("batch worker lost Redis (%s: %s); starting again in %.1f s", type(exc).__name__, exc, delay)
        finally:
            try:
                await batch_worker.close()
            except (RedisError, OSError):  # closing what is already broken
                pass
        await asyncio.sleep(delay)
