"""The worker: XREADGROUP → adapter → publish → store → XACK, for one provider.

    run ─▶ _pull (XREADGROUP, at most `free slots` jobs) ─▶ _run_job (one task per job)
           _run_job ─▶ handlers.serve (by job kind) ─▶ Outbox.finish (publish+store+ack+del)

A semaphore-like slot count bounds jobs in flight per process. `stop()` stops
pulling and lets in-flight jobs finish (bounded by `drain_timeout_s`); `burst`
mode drains what is queued and returns, which makes tests deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from redis.asyncio import Redis

from broker.config import Config
from broker.errors import BrokerError, ErrorInfo, RequestTimeout
from broker.jobs import Job
from broker.keys import Keys
from broker.outbox import Outbox
from broker.streams import ensure_group, read_jobs
from workers import handlers
from workers.providers import Provider, build_provider

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        config: Config,
        provider_name: str,
        redis: Redis,
        *,
        concurrency: int | None = None,
        burst: bool = False,
        drain_timeout_s: float = 30.0,
        block_ms: int = 1000,
    ) -> None:
        if provider_name not in config.providers:
            raise ValueError(f"unknown provider {provider_name!r}; configured: {sorted(config.providers)}")
        self.config = config
        self.provider_name = provider_name
        self.redis = redis
        self.keys = Keys(config.namespace)
        self.concurrency = concurrency or config.providers[provider_name].concurrency
        self.burst = burst
        self.drain_timeout_s = drain_timeout_s
        self.block_ms = block_ms
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stream = self.keys.jobs(provider_name)
        self.provider: Provider = build_provider(provider_name, config.providers[provider_name])
        self.outbox = Outbox(redis, self.keys, result_ttl_s=config.server.result_ttl_s)
        self.jobs_done = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        await ensure_group(self.redis, self.stream)
        self.outbox.start()
        log.info("worker %s serving %s (concurrency %d)", self.consumer, self.stream, self.concurrency)
        try:
            while not self._stopping.is_set():
                pulled = await self._pull()
                if self.burst and not pulled and not self._in_flight:
                    break
        finally:
            await self._drain()
            await self.outbox.aclose()
            await self.provider.aclose()

    def stop(self) -> None:
        """Stop pulling new jobs; `run` returns once in-flight jobs are done."""
        self._stopping.set()

    async def _pull(self) -> int:
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            self._slot_freed.clear()
            stop = asyncio.ensure_future(self._stopping.wait())
            freed = asyncio.ensure_future(self._slot_freed.wait())
            await asyncio.wait({stop, freed}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel(), freed.cancel()
            return 0
        block = 50 if self.burst else self.block_ms
        jobs = await read_jobs(self.redis, self.stream, self.consumer, count=min(free, 128), block_ms=block)
        for entry_id, job in jobs:
            task = asyncio.create_task(self._run_job(entry_id, job))
            self._in_flight.add(task)
            task.add_done_callback(self._job_done)
        return len(jobs)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self.jobs_done += 1
        self._slot_freed.set()

    async def _drain(self) -> None:
        if self._in_flight:
            done, pending = await asyncio.wait(self._in_flight, timeout=self.drain_timeout_s)
            for task in pending:  # left unacked: another worker reclaims them
                task.cancel()

    async def _run_job(self, entry_id: bytes, job: Job | None) -> None:
        if job is None:
            log.error("dropping undecodable entry %r on %s", entry_id, self.stream)
            await self.redis.xack(self.stream, "workers", entry_id)
            await self.redis.xdel(self.stream, entry_id)
            return
        body, usage, error = b"", None, None
        try:
            if time.time() >= job.deadline:
                raise RequestTimeout(
                    f"request timed out in the queue after {job.deadline - job.created:.0f}s "
                    f"waiting for a {job.provider} worker"
                )
            body, usage = await handlers.serve(self.provider, job, lambda event: self.outbox.chunk(job, event))
        except BrokerError as exc:
            error = exc.to_info()
        except Exception:
            log.exception("job %s failed in provider %s", job.id, self.provider_name)
            error = ErrorInfo(
                kind="BrokerError", message="internal error in the worker", status=500, type="server_error"
            )
        try:
            await self.outbox.finish(job, entry_id, self.stream, body=body, usage=usage, error=error)
        except Exception as exc:  # Redis unreachable: the entry stays pending for reclaim
            log.error("could not finish job %s: %s", job.id, exc)
