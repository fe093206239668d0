"""Worker side of the reply path: coalesce replies per job, pipeline them per burst.

A streaming job produces a chunk every few milliseconds; a PUBLISH per chunk
would cost a Redis round trip each and wake the API once per token. Instead
chunks go into a per-job buffer, and one flusher task per worker process sends
everything buffered since its last round trip in a single pipeline: under load
many jobs' chunks share one round trip and one job's burst becomes one
message; when idle a chunk leaves as soon as it is produced.

A job's end (final reply, result key with its TTL, the tenant's token bucket settled with the real
usage, and finish.lua: XACK, XDEL) goes in the same pipeline, after the job's last chunk, so the entry
is acknowledged only once the client's answer has been handed to Redis. Only the acknowledging delivery
may count a job in the ledger (broker/money/ledger.py). On one Redis (standalone or Sentinel) the whole
end is one script call, job_end.lua: settle, free the job's concurrency slots (Job.slots; the reply says so,
Final.freed, and the API releases nothing), reply, store, acknowledge, and count if acknowledged. On a
Cluster those keys live in three slots (the tenant's, the provider's, the result's own), so they stay
separate commands and the ends finish.lua acknowledged go to the ledger in the next pipeline; under
load that pipeline carries the next burst anyway; when idle it leaves at once, on its own.

Every reply of a worker goes through PUBLISH commands in pipeline order: under Redis Cluster never from
a script, as PUBLISH is sent to the node of its channel's slot, so one API process's messages all leave
from one node, in order. On one Redis, job_end.lua's PUBLISH is executed in its pipeline's order too.

Sequence numbers are assigned here, at flush time, in send order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError

from broker.config import Tenant, UsageSettings
from broker.errors import ErrorInfo
from broker.keys import Keys
from broker.limits.ratelimit import settlements
from broker.money import ledger
from broker.ops.redaction import redact
from broker.queue import async_jobs, durability, job_events, stored_responses
from broker.queue.jobs import Chunk, Failed, Final, Job, key_limits, reply_encoder
from broker.queue.payloads import ResponsesPayload
from broker.queue.streams import QueueScripts
from broker.store import pinned_pipeline
from broker.store.scripts import Queued, evalsha_into, publish_into, resend_unknown
from broker.wire import Usage

log = logging.getLogger(__name__)

# How often a worker stores its moving average of a provider's service time (finish.lua's ARGV[7]): the
# average moves with every job, but enqueue.lua reads it only to judge a queue past `min_queue`, where a
# figure a quarter of a second old is as good; per job it cost two commands (read, write) each time.
SERVICE_WRITE_S = 0.25


@dataclass(slots=True)
class _Chunks:
    job: Job
    events: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class _Started:
    job: Job  # an async job a worker began: its status record says so


@dataclass(slots=True)
class _End:
    job: Job
    entry_id: bytes
    stream: str | bytes
    body: bytes
    usage: Usage | None
    error: ErrorInfo | None
    service_ms: int
    ttft_ms: int
    timed: bool
    ledger: ledger.Entry | None
    done: asyncio.Future[None]
    seq: int = -1  # assigned at flush
    finish: Queued | None = None  # its finish.lua (or job_end.lua) call in the flush's pipeline
    whole: bool = False  # job_end.lua: its ledger is counted in that call, not in the next pipeline


class Outbox:
    def __init__(self, redis: Redis, keys: Keys, scripts: QueueScripts, *, result_ttl_s: int,
                 tenants: dict[str, Tenant], usage: UsageSettings, resume_ttl_s: int = 60,
                 responses_ttl_s: int = 30 * 86_400, durable: durability.Replicated | None = None,
                 write_format: int = 2) -> None:
        self.redis = redis
        self.durable = durable  # `redis.durability: replicated`: ends wait for replicas (durability.py)
        self.keys = keys
        self.scripts = scripts
        self.tenants = tenants
        self.usage = usage
        self.result_ttl_s = result_ttl_s
        self.resume_ttl_s = resume_ttl_s
        self.responses_ttl_s = responses_ttl_s  # stored Responses (config `responses.store_ttl_s`)
        self._ops: list[_Chunks | _Started | _End] = []
        self._open: dict[str, _Chunks] = {}
        self._seq: dict[str, int] = {}
        self._log = job_events.EventLog(keys, write_format)  # streamed jobs' resumable event logs
        self._wake = asyncio.Event()
        self._counts: list[ledger.Entry] = []  # acknowledged ends for the ledger: in the next pipeline
        self._idle = asyncio.Event()  # nothing queued, nothing being sent
        self._idle.set()
        # provider -> (moving average of its jobs' service ms, when it was last stored: monotonic s)
        self._service: dict[str, tuple[float, float]] = {}
        # One Redis, not a Cluster: a job's end (bucket, reply, result, acknowledgement, ledger) is one
        # job_end.lua call, as its keys need not share a slot. Not with replicated durability: there the
        # end's PUBLISH must follow a WAIT, which no script can run (durability.py).
        self._one_redis = not isinstance(redis, RedisCluster)
        self._one_call = self._one_redis and durable is None
        self._task: asyncio.Task[None] | None = None
        # The flusher's own connection, kept (one flush at a time): a pooled one is checked out and its
        # socket probed for stray data (a read syscall) on every flush. Reconnects itself after an error.
        self._connection: Connection | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="outbox")

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Send what is queued (the last ends' ledger), for at most `timeout_s`, then stop."""
        if self._task:
            await self.settled(timeout_s)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await self.redis.connection_pool.release(connection)

    async def settled(self, timeout_s: float) -> bool:
        """Wait until everything queued has been sent (True), or `timeout_s` passed (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    def chunk(self, job: Job, event: bytes) -> None:
        """Queue one JSON-encoded SSE event for the job's client (non-blocking)."""
        buffered = self._open.get(job.id)
        if buffered is None:
            buffered = self._open[job.id] = _Chunks(job)
            self._ops.append(buffered)
        buffered.events.append(event)
        self._idle.clear()
        self._wake.set()

    async def finish(
        self,
        job: Job,
        entry_id: bytes,
        stream: str | bytes,
        *,
        body: bytes = b"",
        usage: Usage | None = None,
        error: ErrorInfo | None = None,
        service_ms: int = 0,
        ttft_ms: int = 0,
        timed: bool = False,
        ledger: ledger.Entry | None = None,
    ) -> None:
        """Send the job's terminal reply, store its result, ack and delete its entry; wait till done.

        `service_ms`: how long the job ran, for the provider's average (0: not a measure of the work);
        `ttft_ms` its time to first token; `timed`: keep the deployment's own averages (latency routing);
        `ledger`: what the job adds to the usage ledger, if this delivery is the one that ends it.
        """
        self._open.pop(job.id, None)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ops.append(_End(job, entry_id, stream, body, usage, error, service_ms, ttft_ms, timed, ledger, done))
        self._idle.clear()
        self._wake.set()
        await done

    def started(self, job: Job) -> None:
        """An async job began running (its status turns `in_progress`; non-blocking)."""
        self._ops.append(_Started(job))
        self._idle.clear()
        self._wake.set()

    def forget(self, job_id: str) -> None:
        """The job's end will not be retried: drop its sequence counter."""
        self._seq.pop(job_id, None)
        self._log.forget(job_id)

    def _next_seq(self, job_id: str) -> int:
        seq = self._seq.get(job_id, 0)
        self._seq[job_id] = seq + 1
        return seq

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            ops, self._ops = self._ops, []
            counts, self._counts = self._counts, []
            self._open.clear()
            try:
                await self._flush(ops, counts)
            except Exception as exc:
                log.error("reply flush failed (%d ops): %s", len(ops), exc)
                self._log.reset()
                for op in ops:
                    if isinstance(op, _End) and not op.done.done():
                        # A retried end keeps its sequence number: the API, which may have missed only
                        # this message, then takes it as the next one rather than as a gap.
                        if op.seq >= 0:
                            self._seq[op.job.id] = op.seq
                        op.done.set_exception(exc)
            if not self._ops and not self._counts:
                self._idle.set()

    async def _flush(self, ops: list[_Chunks | _Started | _End], counts: list[ledger.Entry]) -> None:
        if self._connection is None and pinned_pipeline.pins(self.redis):
            self._connection = await self.redis.connection_pool.get_connection()
        pipe = pinned_pipeline.pipeline(self.redis, self._connection)
        # EVALSHA calls, sent again if Redis lost its scripts; first the ledger of the ends acknowledged
        # by the previous pipeline.
        scripted: list[Queued] = ledger.write_into(pipe, self.scripts.ledger, self.keys, self.usage, counts)
        counted = len(pipe)
        # replicated: each end's PUBLISH and finish.lua held back, to follow the WAIT after every write here.
        durable = self.durable
        held: list[tuple[_End, bytes, list[Any]]] | None = None if durable is None else []
        for op in ops:
            job = op.job
            if isinstance(op, _Started):
                async_jobs.mark_started(pipe, self.keys, job)
                continue
            if isinstance(op, _Chunks):
                seq = self._next_seq(job.id)
                reply = (Chunk(job.id, job.attempt, seq, op.events, job.served_by, job.calls) if seq == 0
                         else Chunk(job.id, job.attempt, seq, op.events))
                encoded = reply_encoder.encode(reply)
                publish_into(pipe, job.reply_to, encoded)
                self._log.record(pipe, job, seq, op.events)
                continue
            seq = op.seq = self._next_seq(job.id)
            del self._seq[job.id]
            # Its concurrency slots freed before its reply is published, in order on one Redis: in
            # job_end.lua, or (replicated) among the writes before the WAIT. On a Cluster the API frees them.
            freed = bool(job.slots) and self._one_redis
            terminal = (
                # Every error a worker sends passes here: the last place an upstream's echo of our key is caught.
                Failed(job.id, job.attempt, seq, msgspec.structs.replace(op.error, message=redact(op.error.message)),
                       freed)
                if op.error is not None
                else Final(job.id, job.attempt, seq, op.body, op.usage, job.served_by, job.calls, freed)
            )
            encoded = reply_encoder.encode(terminal)
            if job.streams:
                self._log.record_end(pipe, job, seq, encoded, job.async_ttl_s or self.resume_ttl_s)
            tenant = self.tenants.get(job.tenant)
            settle: list[tuple[str, int, int]] = []
            if tenant is not None and op.usage is not None:
                # The TPM bucket was charged an estimate at admission; settle it with what was used,
                # before the reply goes out, so the client's next request already sees it.
                # (A job queued by an API older than `key_tpm` names a key whose limits are in config.)
                key = key_limits(job) or tenant.api_key(job.key)
                settle = settlements(self.keys, job.tenant, tenant, job.estimated_tokens, op.usage.total_tokens,
                                     key=key)
            if not self._one_call:
                scripted += [evalsha_into(pipe, self.scripts.reconcile, [bucket], [tpm, delta])
                             for bucket, tpm, delta in settle]
            if op.error is None and isinstance(job.payload, ResponsesPayload) and job.payload.keep:
                # Before the reply: its client cannot see it complete before it is readable (stored_responses.py).
                if (kept := self._keep_response(pipe, job, job.payload, op.body)) is not None:
                    scripted.append(kept)
            finish_args = [op.entry_id, job.tenant, op.service_ms, job.upstream_model, op.ttft_ms,
                           "1" if op.timed else "0", self._service_average(job.provider, op.service_ms)]
            if self._one_call:
                op.finish, op.whole = self._job_end(pipe, op, encoded, finish_args, settle), True
                scripted.append(op.finish)
            elif held is None:
                publish_into(pipe, job.reply_to, encoded)
                pipe.set(self.keys.result(job.id), encoded, ex=job.async_ttl_s or self.result_ttl_s)
                scripted.append(self._finish_into(pipe, op, finish_args))
            else:
                pipe.set(self.keys.result(job.id), encoded, ex=job.async_ttl_s or self.result_ttl_s)
                if freed:
                    for slots in job.slots:
                        pipe.zrem(slots, job.id)
                held.append((op, encoded, finish_args))
        waited = None
        if durable is not None and held is not None and (held or counts):
            waited = durable.wait_into(pipe)
            for op, encoded, finish_args in held:  # the PUBLISH before the XACK, as above (durability.py says why)
                publish_into(pipe, op.job.reply_to, encoded)
                scripted.append(self._finish_into(pipe, op, finish_args))
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            # Sent or not, unknowable: never sent again (a job counted twice is worse than once not).
            if counts:
                log.error("usage of %d ended jobs may not be recorded: %s", len(counts), exc)
            raise
        # Redis restarted and lost its scripts: only those commands failed (the chunks between them
        # went out), so send just those again, in order.
        if durable is None or waited is None:
            await resend_unknown(scripted, results)
        else:
            await durability.settle(self.redis, durable, scripted, results, waited, ends=len(held or ()),
                                    counts=len(counts))
        failures = [r for r in results if isinstance(r, Exception) and not isinstance(r, NoScriptError)]
        if lost := [r for r in results[:counted] if isinstance(r, Exception)]:
            log.error("usage of %d ended jobs not recorded: %s", len(counts), lost[0])
        # Before any failure is raised: an end acknowledged here is not acknowledged by its retry.
        acknowledged = []
        for op in ops:
            if not isinstance(op, _End) or op.ledger is None or op.finish is None:
                continue
            answer = results[op.finish.position]
            if not op.whole:
                if answer == 1:
                    acknowledged.append(op.ledger)
            elif isinstance(answer, list) and answer[1]:  # job_end.lua counted it, or says why it could not
                log.error("usage of job %s not recorded: %s", op.job.id, answer[1])
        if acknowledged:
            self._counts += acknowledged
            self._wake.set()
        if failures:
            raise failures[0]
        for op in ops:
            if isinstance(op, _End) and not op.done.done():
                op.done.set_result(None)

    def _job_end(self, pipe: Pipeline, op: _End, reply: bytes, finish_args: list[Any],
                 settle: list[tuple[str, int, int]]) -> Queued:
        """job_end.lua for `op`, queued in `pipe` (its KEYS and ARGV layout are the script's)."""
        job, entry = op.job, op.ledger
        keys = [*self.finish_keys(job, op.stream), self.keys.result(job.id), self.keys.usage_log(),
                *(bucket for bucket, _, _ in settle), *job.slots, *(entry.keys if entry else [])]
        args = [len(settle), len(entry.keys) if entry else 0, len(finish_args), job.reply_to, reply,
                job.async_ttl_s or self.result_ttl_s, self.usage.log_maxlen, entry.record if entry else b"",
                len(job.slots), job.id, *finish_args, *(v for _, tpm, delta in settle for v in (tpm, delta)), *(entry.args if entry else [])]
        return evalsha_into(pipe, self.scripts.job_end, keys, args)

    def _service_average(self, provider: str, sample_ms: int) -> str:
        """The provider's average service time to store with this end, or '' (not yet due): a moving
        average of this worker's jobs (weights as finish.lua's own: 0.8 the average, 0.2 the sample)."""
        if sample_ms <= 0:
            return ""
        now = time.monotonic()
        average, stored_at = self._service.get(provider, (0.0, -SERVICE_WRITE_S))
        average = 0.8 * average + 0.2 * sample_ms if average > 0 else float(sample_ms)
        due = now - stored_at >= SERVICE_WRITE_S
        self._service[provider] = (average, now if due else stored_at)
        return f"{average:.3f}" if due else ""

    def _keep_response(self, pipe: Pipeline, job: Job, payload: ResponsesPayload, body: bytes) -> Queued | None:
        try:
            items = stored_responses.own_items(payload.body)
            context, own = stored_responses.context(payload.response_id, items, payload.earlier)
            response = stored_responses.completed_response(body, streamed=job.streams)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError, KeyError) as exc:
            # The API decoded this body and a worker wrote the answer: never expected, and never worth
            # failing every end in this pipeline for. The client gets its answer; the id reads as unknown.
            log.error("response %s not stored: %s", payload.response_id, exc)
            return None
        return evalsha_into(pipe, self.scripts.response_keep, [self.keys.response(payload.response_id)],
                            stored_responses.keep_args(self.responses_ttl_s, job.tenant, context, own, response=response))

    def _finish_into(self, pipe: Pipeline, op: _End, finish_args: list[Any]) -> Queued:
        """finish.lua for the end (XACK, XDEL, service times), remembered on it."""
        op.finish = evalsha_into(pipe, self.scripts.finish, self.finish_keys(op.job, op.stream), finish_args)
        return op.finish

    def finish_keys(self, job: Job, stream: str | bytes) -> list[Any]:
        """finish.lua's KEYS, all in the provider's Cluster slot."""
        p = job.provider
        return [stream, self.keys.active(p, job.lane), self.keys.drain(p), self.keys.circuit(p)]
