"""The worker: pull → adapter → publish → finish, for one provider.

    run ─▶ pull.lua (fair, at most `free slots` jobs) ─▶ _run_job (one task per job)
           _run_job ─▶ handlers.serve (by job kind) ─▶ Outbox.finish (finish.lua)
    _listen     bell (work arrived) and cancel (client left) channels, one pub/sub connection
    _heartbeat  liveness + lease refresh of held entries; reclaims dead workers' jobs

Delivery: a job is acknowledged only by finish.lua. A worker that dies leaves
its entries pending; once idle past `claim_idle_s` (live workers refresh theirs
every heartbeat) another worker claims and reruns them with attempt + 1, and
after `max_attempts` deliveries a job goes to the dead-letter stream and its
client gets an error. `stop()` (SIGTERM) stops pulling and lets in-flight jobs
finish within `drain_timeout_s`; `burst` mode drains the queue and returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from broker.config import Config
from broker.errors import BrokerError, ErrorInfo, RequestTimeout
from broker.keys import WORKER_GROUP, Keys
from broker.limits import circuit
from broker.limits.ratelimit import Limiter
from broker.money import ledger, pricing
from broker.money.usage_sink import UsageSink
from broker.ops import log_context, metrics, redaction, rollups, series_upkeep
from broker.queue import dead_letters, durability
from broker.queue.jobs import Job, decode_queued
from broker.queue.outbox import Outbox
from broker.queue.streams import (
    Pulled,
    QueueScripts,
    cancelled,
    hand_off,
    heartbeat,
    leave,
    pull,
    reclaim,
)
from broker.routing.capabilities import estimate_tokens
from broker.store import key_migration, pinned_pipeline
from broker.store.connection import subscriber
from workers import attempts, observed
from workers.hedging import Hedging
from workers.meter import Meter
from workers.providers import Provider, build_provider

log = logging.getLogger(__name__)

# While Redis is unreachable, try it this often; once it answers, wait this long before pulling (see
# `_until_redis_is_back`): API processes retry their reply channel every 0.1 s.
OUTAGE_RETRY_S = 0.25
RESUME_AFTER_OUTAGE_S = 1.0
# A finished job's outcome is retried at most this far apart while Redis is away.
FINISH_RETRY_MAX_S = 0.5

CLIENT_GONE = ErrorInfo(kind="BrokerError", message="the client disconnected; the job was cancelled",
                        status=499, type="cancelled", code="client_disconnected")


class Worker:
    def __init__(self, config: Config, provider_name: str, redis: Redis, *, concurrency: int | None = None,
                 burst: bool = False, health_file: Path | None = None) -> None:
        if provider_name not in config.providers:
            raise ValueError(f"unknown provider {provider_name!r}; configured: {sorted(config.providers)}")
        self.config = config
        self.queue = config.queue
        self.provider_name = provider_name
        self.redis = redis
        self.keys = Keys(config.namespace)
        self.concurrency = concurrency or config.providers[provider_name].concurrency
        self.max_retries: int = getattr(config.providers[provider_name], "max_retries", 0)
        self.burst = burst
        self.health_file = health_file
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        redaction.install(config)  # our upstream keys never reach a reply or a log line
        self.call_gate = attempts.CallGate(Limiter(redis, self.keys), config)
        self.provider: Provider = build_provider(provider_name, config.providers[provider_name],
                                                 concurrency=self.concurrency)
        self.scripts = QueueScripts(redis)
        # The pull loop's own connection (it pulls one batch at a time), as the outbox's flusher keeps
        # one: no pool checkout, socket probe and release per pull (at c=1, per job). Not under Sentinel.
        self._puller = (Redis(connection_pool=redis.connection_pool, single_connection_client=True)
                        if pinned_pipeline.pins(redis) else None)
        self._pull_scripts = QueueScripts(self._puller) if self._puller is not None else self.scripts
        self.outbox = Outbox(redis, self.keys, self.scripts, result_ttl_s=config.server.result_ttl_s,
                             tenants=config.tenants, usage=config.usage,
                             resume_ttl_s=config.server.stream_resume_ttl_s,
                             responses_ttl_s=config.responses.store_ttl_s, durable=durability.of(config.redis),
                             write_format=config.queue.write_format)
        self.hedging = Hedging(redis, self.scripts, self.keys, config)
        self.prices = pricing.PriceBook(config)
        self.rollups = rollups.enabled(config)  # the console's series (broker/ops/rollups.py)
        self.jobs_done = 0
        self._in_flight: dict[str, tuple[asyncio.Task[None], Pulled]] = {}
        self._in_flight_gauge = metrics.JOBS_IN_FLIGHT.labels(provider_name)  # one child: not looked up per job
        self._cancelled: set[str] = set()
        self._slot_freed = asyncio.Event()
        self._bell = asyncio.Event()
        self._stopping = asyncio.Event()
        self._redis_lost = False  # a pull or heartbeat failed: pause before the next pull

    async def run(self) -> None:
        await self.scripts.load()
        await key_migration.migrate(self.redis, self.keys, self.config.redis_url)  # before any ledger write
        await self._beat()  # live before the first pull, so the API admits jobs for us
        self.outbox.start()
        helpers = [asyncio.create_task(self._listen()), asyncio.create_task(self._heartbeats())]
        if self.rollups:  # the console's queue charts and hourly series (broker/ops/series_upkeep.py)
            helpers.append(asyncio.create_task(series_upkeep.run(self.redis, self.keys, self.config,
                                                                 self.provider_name)))
        if self.config.usage.postgres_url is not None:  # durable usage records (broker/money/usage_sink.py)
            helpers.append(asyncio.create_task(UsageSink(self.redis, self.keys, self.config.usage, self.consumer).run()))
        log.info("worker %s serving provider %s (concurrency %d)", self.consumer, self.provider_name,
                 self.concurrency)
        try:
            while not self._stopping.is_set():
                free = self.concurrency - len(self._in_flight)
                if free <= 0:
                    self._slot_freed.clear()
                    await self._until(self._slot_freed, timeout_s=1.0)
                    continue
                if self._redis_lost:
                    await self._until_redis_is_back()
                self._bell.clear()  # before pulling: a bell rung during the pull is not lost
                asked = min(free, 64)
                try:
                    pulled = await pull(self._pull_scripts, self.keys, self.queue, self.provider_name, self.consumer, asked)
                except RedisError as exc:  # Redis restarting or unreachable: keep the jobs we hold, retry
                    log.warning("cannot pull jobs: %s", exc)
                    self._redis_lost = True
                    continue
                for item in pulled:
                    self._start(item)
                if len(pulled) < asked:
                    # The queues had no more to give: pulling again at once would only find them empty
                    # (a whole pull.lua run). The next job enqueued rings the bell (enqueue.lua); a bell
                    # missed (pub/sub is at most once) costs at most the timeout.
                    if not pulled and self.burst and not self._in_flight:
                        break
                    await self._until(self._bell, timeout_s=0.05 if self.burst else 1.0)
        finally:
            for helper in helpers:
                helper.cancel()
            await self._drain()
            with suppress(Exception):
                await leave(self.redis, self.keys, self.provider_name, self.consumer, self.scripts)
            await self.outbox.aclose()
            await self.provider.aclose()
            if self._puller is not None:
                await self._puller.aclose()  # its connection back to the shared pool

    def stop(self) -> None:
        """Stop pulling new jobs; `run` returns once in-flight jobs are done."""
        self._stopping.set()
        self._bell.set()  # wakes `_until`, whichever of them it waits on
        self._slot_freed.set()

    async def _until_redis_is_back(self) -> None:
        """Wait for Redis, then a moment more before pulling again.

        API processes fail the requests that waited through a long outage and
        cancel their jobs once Redis answers again; the pause lets them mark those
        jobs (pull.lua then drops them) before any upstream call is paid for.
        """
        while not self._stopping.is_set():
            await self._until(self._stopping, timeout_s=OUTAGE_RETRY_S)
            with suppress(RedisError):
                await self.redis.ping()
                break
        await self._until(self._stopping, timeout_s=RESUME_AFTER_OUTAGE_S)
        self._redis_lost = False

    async def _until(self, event: asyncio.Event, *, timeout_s: float) -> None:
        """Until `event`, `stop()` (which sets every event waited on here) or `timeout_s`. No task made:
        at c=1 this wait is on every job's path (the bell), and two tasks and asyncio.wait cost more
        than the rest of the wake-up."""
        if event.is_set() or self._stopping.is_set():
            return
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()

    # ---------------------------------------------------------------- jobs

    def _start(self, item: Pulled, *, attempt: int = 1) -> None:
        try:
            job = decode_queued(item.payload, item.job_id, self.keys.replies(""))
        except msgspec.DecodeError:
            log.error("dropping undecodable entry %r on %s", item.entry_id, item.stream)
            job = None
        task = asyncio.create_task(self._run_job(item, job, attempt))
        self._in_flight[item.job_id] = (task, item)
        self._in_flight_gauge.inc()
        task.add_done_callback(lambda _: self._job_done(item.job_id))

    def _job_done(self, job_id: str) -> None:
        self._in_flight.pop(job_id, None)
        self._in_flight_gauge.dec()
        self._cancelled.discard(job_id)
        self.jobs_done += 1
        self._slot_freed.set()

    async def _run_job(self, item: Pulled, job: Job | None, attempt: int) -> None:
        if job is None:
            await self.redis.xack(item.stream, WORKER_GROUP, item.entry_id)
            await self.redis.xdel(item.stream, item.entry_id)
            return
        job.attempt = attempt
        waited_s = observed.job_started(job)
        log_context.bind(f"req_{job.id}", job.client_request_id)  # this task's log lines name the request
        body, usage, error = b"", None, None
        started = time.monotonic()
        emitted = False  # once a chunk is on its way to the client, the job can no longer fail over
        first_token = 0.0
        # Jobs of hedged groups may race a second attempt (workers/hedging.py); others never do.
        racer = self.hedging.racer(job, lambda event: self.outbox.chunk(job, event), lambda: self._cancel(job.id))
        meter = Meter(self.prices.price(job.provider, job.upstream_model))

        def emit(event: bytes) -> None:
            nonlocal emitted, first_token
            if not emitted:
                emitted, first_token = True, time.monotonic()
            if racer is None:
                self.outbox.chunk(job, event)
            else:
                racer.emit(event)

        try:
            if time.time() >= job.deadline:
                raise RequestTimeout(f"request timed out in the queue after {job.deadline - job.created:.0f}s "
                                     f"waiting for a {job.provider} worker")
            if attempt > self.queue.max_attempts:
                raise BrokerError(f"the job failed on every attempt ({self.queue.max_attempts}): the workers "
                                  "running it stopped responding", code=dead_letters.ATTEMPTS_EXHAUSTED)
            if job.async_ttl_s:
                self.outbox.started(job)
            if racer is not None and not await racer.start():
                return await self._bow_out(job, item)
            body, usage = await attempts.call(self.provider, job, emit, meter, emitted=lambda: emitted,
                                              max_retries=self.max_retries,
                                              on_failure=lambda err: self._count_failure(job, err),
                                              gate=self.call_gate)
            if racer is not None and not await racer.wins():
                return await self._bow_out(job, item)
        except asyncio.CancelledError:
            if job.id not in self._cancelled:
                raise  # shutdown: leave the entry pending, another worker reclaims it
            if racer is not None and not await racer.quit():
                return await self._bow_out(job, item)  # cancelled by the attempt that won the race
            error = CLIENT_GONE  # the upstream call is aborted; its tokens are not spent
        except BrokerError as exc:
            if racer is not None and not await racer.quit():
                return await self._bow_out(job, item)  # the attempt still racing answers
            failed = exc if emitted else await attempts.fail_over(self.scripts, self.keys, self.config, job,
                                                                   item, exc)
            if failed is None:
                return  # queued on its next deployment, which answers it
            error = failed.to_info()
        except Exception:
            log.exception("job %s failed in provider %s", job.id, self.provider_name)
            error = ErrorInfo(kind="BrokerError", message="internal error in the worker", status=500,
                              type="server_error")
        finally:
            if racer is not None:
                racer.close()
        if error is not None and dead_letters.deserves(error):
            metrics.DEAD_LETTERED.labels(self.provider_name).inc()
            tried = self.queue.max_attempts if error.code == dead_letters.ATTEMPTS_EXHAUSTED else job.calls
            await self._dead_letter(job, error, tried)
        service_ms = 0 if error is not None else max(1, int((time.monotonic() - started) * 1000))
        ttft_ms = max(1, int((first_token - started) * 1000)) if first_token else 0
        if racer is not None and error is None:
            self.hedging.observe(job, (ttft_ms or service_ms) / 1000)
        # The prompt is estimated only where the provider reported no usage (the common case has it).
        prompt_estimate = estimate_tokens(job.request) if meter.usage is None else 0
        charge = pricing.charge(meter.price, meter.usage, prompt_estimate=prompt_estimate,
                                output_chars=meter.output_chars, answered=error is None or meter.responded)
        charge = meter.settle(charge)  # a media job's own units (workers/media.py)
        outcome: ledger.Outcome = "ok" if error is None else "cancelled" if error is CLIENT_GONE else "error"
        observed.job_ended(job, outcome, service_ms, ttft_ms, charge, error=error, waited_s=waited_s,
                           elapsed_ms=int((time.monotonic() - started) * 1000))
        await self._finish(job, item, body=body, usage=usage, error=error, service_ms=service_ms, ttft_ms=ttft_ms,
                           timed=(job.provider, job.upstream_model) in self.call_gate.timed,
                           ledger=ledger.entry(self.keys, job, charge, outcome, time.time(), self.config.usage,
                                               error=error, ttft_ms=ttft_ms and ttft_ms + int(waited_s * 1000),
                                               rollups=self.rollups))

    async def _bow_out(self, job: Job, item: Pulled) -> None:
        """Another attempt of this hedged job answers it: acknowledge ours without a reply."""
        self.outbox.forget(job.id)
        try:
            await hand_off(self.scripts, self.keys, job, item.entry_id, item.stream)
        except RedisError as exc:  # left pending: its re-delivery finds the race lost and bows out then
            log.warning("job %s: could not acknowledge the losing attempt: %s", job.id, exc)

    async def _count_failure(self, job: Job, err: BrokerError) -> None:
        """Against the deployment's circuit, shared by every process (broker/limits/circuit.py)."""
        observed.upstream_failed(job, err.status)
        try:
            if await circuit.report_failure(self.scripts, self.keys, self.config.circuit, job, err):
                log.warning("circuit of %s/%s opened for %gs after %d failures in a row (last: %s)", job.provider,
                            job.upstream_model, self.config.circuit.open_s, self.config.circuit.failures, err.message)
        except RedisError as exc:  # the failure itself is what matters to this job
            log.warning("could not count a failure of %s/%s: %s", job.provider, job.upstream_model, exc)

    async def _finish(self, job: Job, item: Pulled, **outcome: Any) -> None:
        """Hand the outcome to Redis, retrying while it is unreachable: given up, the entry would be
        reclaimed and the job run (and paid for) again. Past the job's deadline nobody waits for it."""
        delay, warned = 0.05, False
        while True:
            try:
                await self.outbox.finish(job, item.entry_id, item.stream, **outcome)
                return
            except Exception as exc:
                if time.time() >= job.deadline or self._stopping.is_set():
                    log.error("could not finish job %s: %s; its entry stays pending for reclaim", job.id, exc)
                    self.outbox.forget(job.id)
                    return
                if not warned:
                    log.warning("could not finish job %s: %s; retrying until Redis answers", job.id, exc)
                    warned = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, FINISH_RETRY_MAX_S)

    async def _dead_letter(self, job: Job, error: ErrorInfo, tried: int) -> None:
        try:
            await dead_letters.add(self.redis, self.keys, self.queue, job, error, tried)
        except Exception as exc:  # the client's error matters more: it still goes out
            log.warning("could not dead-letter job %s: %s", job.id, exc)

    async def _drain(self) -> None:
        tasks = [task for task, _ in self._in_flight.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.queue.drain_timeout_s)
            for task in pending:  # left unacknowledged: another worker reclaims them
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # ---------------------------------------------------------------- background

    async def _listen(self) -> None:
        """Bell: work arrived (wake the pull loop). Cancel: a client left (abort its job)."""
        bell, cancel = self.keys.bell(self.provider_name), self.keys.cancel_channel(self.provider_name)
        while True:
            pubsub = subscriber(self.redis).pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(bell, cancel)
                # Cancellations published while we were not subscribed are lost: their markers are not.
                for job_id in await cancelled(self.redis, self.keys, self.provider_name, list(self._in_flight)):
                    self._cancel(job_id)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message["channel"].decode() == bell:
                        self._bell.set()
                    else:
                        self._cancel(message["data"].decode())
            except asyncio.CancelledError:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except Exception as exc:
                log.warning("worker channels interrupted: %s", exc)
                with suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(0.5)

    def _cancel(self, job_id: str) -> None:
        running = self._in_flight.get(job_id)
        if running is not None:
            self._cancelled.add(job_id)
            running[0].cancel()

    async def _beat(self) -> None:
        held: dict[str, list[bytes]] = {}
        for _, item in self._in_flight.values():
            held.setdefault(item.stream, []).append(item.entry_id)
        await heartbeat(self.redis, self.keys, self.provider_name, self.consumer, held)
        metrics.HEARTBEATS.labels(self.provider_name).inc()
        if self.health_file is not None:  # a container healthcheck reads its age: live as the API sees us
            self.health_file.touch()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.queue.heartbeat_interval_s)
            try:
                await self._beat()
                free = self.concurrency - len(self._in_flight)
                if free > 0 and not self._stopping.is_set():
                    for item in await reclaim(self.scripts, self.redis, self.keys, self.queue,
                                              self.provider_name, self.consumer, free):
                        if item.job_id in self._in_flight:
                            continue  # our own entry: still running, only its lease lapsed
                        log.warning("reclaimed job %s (delivery %d) from a dead worker", item.job_id, item.delivered)
                        metrics.RECLAIMED.labels(self.provider_name).inc()
                        self._start(item, attempt=item.delivered)
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
                self._redis_lost = self._redis_lost or isinstance(exc, RedisError)
