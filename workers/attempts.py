"""A job's calls to this worker's deployment, and its hand-off to the next one.

broker/routing/failover.py decides (retry here? fail over? what error when nothing is
left?); this module carries it out: it calls the adapter again after the
backoff it is given, or enqueues the job on its next candidate's queue and
acknowledges it here without an answer, so the next deployment's worker
answers the waiting client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

from redis.exceptions import RedisError

from broker.config import Config
from broker.errors import BrokerError, RateLimited, UpstreamError
from broker.keys import Keys
from broker.limits.ratelimit import Limiter, estimate_request_tokens
from broker.ops import metrics
from broker.queue.jobs import Job
from broker.queue.streams import Pulled, QueueScripts, enqueue, hand_off
from broker.routing import failover
from broker.wire import Usage
from workers import handlers
from workers.handlers import Emit, Outcome
from workers.meter import Meter
from workers.providers import Provider

log = logging.getLogger(__name__)


class CallGate:
    """What a call to a deployment must pass and leave behind, shared across every worker in Redis.

    - A deployment's own upstream limits (config `rpm`, `tpm`, `max_concurrent`): a call over them
      is not made; it fails like the upstream's 429 would, so the job fails over (or waits, on its
      last deployment) without provoking that 429.
    - Deployments of `least-busy` groups: the call is counted in flight while it runs
      (broker/routing/strategies.py reads the count).
    """

    def __init__(self, limiter: Limiter, config: Config) -> None:
        self.limiter = limiter
        groups = [g for name in config.models if (g := config.group(name)) is not None]
        self.limited = {(d.provider, d.model): d for g in groups for d in g.deployments if d.limited()}
        self.counted = {(d.provider, d.model) for g in groups if g.strategy == "least-busy" for d in g.deployments}
        self.timed = {(d.provider, d.model) for g in groups if g.strategy == "latency" for d in g.deployments}

    def applies(self, job: Job) -> bool:
        """Whether a call of this job has anything to pass or leave behind (most have not)."""
        deployment = (job.provider, job.upstream_model)
        return deployment in self.limited or deployment in self.counted

    @asynccontextmanager
    async def held(self, job: Job, call: int) -> AsyncIterator[list[Usage | None]]:
        """Around one call: yields a one-slot list for the call's usage, settled when it ends."""
        usage: list[Usage | None] = [None]
        if (job.provider, job.upstream_model) in self.counted:
            async with self._in_flight(job):
                async with self._within_limits(job, call, usage):
                    yield usage
        else:
            async with self._within_limits(job, call, usage):
                yield usage

    @asynccontextmanager
    async def _in_flight(self, job: Job) -> AsyncIterator[None]:
        busy = self.limiter.keys.busy(job.provider, job.upstream_model)
        deadline_ms = int(job.deadline * 1000)
        with suppress(RedisError):  # advisory: routing reads it, nothing depends on it
            async with self.limiter.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(busy, {job.id: deadline_ms})
                pipe.pexpireat(busy, deadline_ms, gt=True)
                pipe.pexpireat(busy, deadline_ms, nx=True)
                await pipe.execute()
        try:
            yield
        finally:
            with suppress(RedisError):
                await self.limiter.redis.zrem(busy, job.id)

    @asynccontextmanager
    async def _within_limits(self, job: Job, call: int, usage: list[Usage | None]) -> AsyncIterator[None]:
        deployment = self.limited.get((job.provider, job.upstream_model))
        if deployment is None:
            yield
            return
        tokens = job.estimated_tokens or estimate_request_tokens(job.request)
        try:
            admission = await self.limiter.admit_call(deployment, tokens, f"{job.id}:{call}", job.deadline)
        except RateLimited as refused:
            raise UpstreamError(f"deployment {job.provider}/{job.upstream_model} is at its own limit: "
                                f"{refused.message}", status=429, retryable=True,
                                retry_after_s=refused.retry_after_s) from None
        try:
            yield
        finally:
            actual = usage[0].total_tokens if usage[0] is not None else None
            with suppress(RedisError):  # the slot expires at the deadline anyway
                await self.limiter.end_call(deployment, admission, actual)


async def call(provider: Provider, job: Job, emit: Emit, meter: Meter, *, emitted: Callable[[], bool],
               max_retries: int, on_failure: Callable[[BrokerError], Awaitable[None]], gate: CallGate) -> Outcome:
    """Serve the job here, retrying as failover.retry_wait says while nothing has reached the client.
    Every failed call is told to `on_failure` (the deployment's circuit counts it)."""
    retries = 0
    while True:
        try:
            if not gate.applies(job):  # the plain path: no context managers to enter
                return await handlers.serve(provider, job, emit, meter)
            async with gate.held(job, retries) as usage:
                body, usage[0] = await handlers.serve(provider, job, emit, meter)
                return body, usage[0]
        except BrokerError as exc:
            await on_failure(exc)
            wait = None if emitted() else failover.retry_wait(job, exc, retries, max_retries)
            if wait is None:
                raise
            log.warning("job %s: %s/%s failed (%s); retrying in %.2fs", job.id, job.provider, job.upstream_model,
                        exc.message, wait)
            job.failures.append(failover.attempt_of(job, exc))
            retries += 1
            await asyncio.sleep(wait)


async def fail_over(scripts: QueueScripts, keys: Keys, config: Config, job: Job, item: Pulled,
                    err: BrokerError) -> BrokerError | None:
    """Queue `job` on its next candidate instead of answering it: None when done, else the error to
    answer with (listing every attempt)."""
    failed, nxt = job, failover.next_job(job, err)
    while nxt is not None:
        try:
            await enqueue(scripts, keys, config, nxt)
        except BrokerError as refused:  # no live worker there, or its queue cannot meet the deadline
            failed, err, nxt = nxt, refused, failover.advance(nxt, refused)
            continue
        except RedisError:
            break
        log.warning("job %s: %s/%s failed (%s); failed over to %s/%s", job.id, failed.provider,
                    failed.upstream_model, err.message, nxt.provider, nxt.upstream_model)
        await hand_off(scripts, keys, job, item.entry_id, item.stream)
        metrics.FAILOVERS.labels(failed.served_by).inc()
        return None
    return failover.final_error(failed, err)
