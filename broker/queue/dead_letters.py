"""Dead letters: jobs that failed through no fault of their request, kept for an operator to read
(`llm-broker dead list`) and run again once the cause is fixed (`llm-broker dead replay`).

    {ns}:{p}:dead   stream, one entry per job (`Keys.dead_letters`): `job` (msgpack, as it last
                    ran), `error` (its message, redacted), `status`, `code`, `attempts`. Each XADD
                    trims it to about `queue.dead_letter_maxlen` entries and, by entry id, to
                    `queue.dead_letter_retention_s` of age (MINID), and sets the key to expire
                    that long after its newest entry: no entry outlives twice the retention, even
                    when no new failure comes along to trim it.

Which jobs: those whose error a replay could cure. Retryable failures that outlasted every
retry and failover (upstream 5xx, 429s, timeouts, refused connections), an upstream refusing our
own key (502), workers dying on the job (`attempts_exhausted`) and a worker's own bug (500). The
request's own errors (400, 404, 422), an exhausted budget, a deadline that passed, a client that
left: running those again would fail the same way, or answer nobody who asked.

A replay is a fresh run of the same job id through the path the API takes: routed again from its
public model under the current config (so a fixed config takes effect), with a new deadline,
queued by enqueue.lua (lanes, backlog and admission as for any job; a candidate that refuses it
passes it on). Its earlier per-job keys (result, event log, hedging race, cancellation markers)
are cleared first; an async job's record is written again, so `GET /v1/jobs/{id}` follows it.
A synchronous job's client has long had its error: its replies go to a channel nobody reads and
its answer is kept as its result. Replays skip the tenant's rate limits (the operator decided)
but are charged: their tokens settle the tenant's buckets and their cost goes to the ledger and
to the original budget periods that still exist.
"""

from __future__ import annotations

import datetime as dt
import time

import msgspec
from redis.asyncio import Redis

from broker.config import Config, QueueSettings
from broker.errors import ErrorInfo, InvalidRequest
from broker.keys import Keys
from broker.ops.redaction import redact
from broker.queue import async_jobs, job_factory
from broker.queue.jobs import Job, decode_job, encode_whole
from broker.queue.streams import QueueScripts, enqueue_first
from broker.routing.router import Router

ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # workers/loop.py: the workers running it kept dying


def deserves(error: ErrorInfo) -> bool:
    """Whether a job that ended with `error` goes to the dead-letter stream."""
    return error.retryable or error.status in (500, 502)


async def add(redis: Redis, keys: Keys, settings: QueueSettings, job: Job, error: ErrorInfo, attempts: int) -> None:
    key = keys.dead_letters(job.provider)
    retention_ms = int(settings.dead_letter_retention_s * 1000)
    pipe = redis.pipeline(transaction=False)
    pipe.xadd(key, {"job": encode_whole(job, settings.write_format), "error": redact(error.message),
                    "status": error.status, "code": error.code or "", "attempts": attempts},
              maxlen=settings.dead_letter_maxlen, approximate=True)
    # Stream ids are the server's milliseconds; a worker's clock a little off moves the cut by as much.
    pipe.xtrim(key, minid=f"{int(time.time() * 1000) - retention_ms}-0", approximate=False)
    pipe.pexpire(key, retention_ms)
    await pipe.execute()


class DeadLetter(msgspec.Struct, kw_only=True):
    """One dead-lettered job as `llm-broker dead list --json` prints it."""

    provider: str
    entry: str  # its id in the dead-letter stream
    failed_at: str  # UTC, ISO 8601 (from the entry id)
    job_id: str
    tenant: str
    model: str  # the public model the client asked for
    deployment: str  # where it last failed: provider/upstream model
    lane: str
    attempts: int  # upstream calls, or deliveries for attempts_exhausted (0: not recorded)
    status: int
    code: str | None
    error: str


class Found(msgspec.Struct, frozen=True):
    letter: DeadLetter
    job: Job


def _found(provider: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Found:
    job = decode_job(fields[b"job"])
    millis = int(entry_id.split(b"-")[0])
    return Found(DeadLetter(
        provider=provider, entry=entry_id.decode(), job_id=job.id, tenant=job.tenant, model=job.model,
        failed_at=dt.datetime.fromtimestamp(millis / 1000, dt.UTC).isoformat(timespec="seconds"),
        deployment=job.served_by, lane=job.lane, attempts=int(fields.get(b"attempts", b"0")),
        # Entries written before `status` and `code` existed were all attempts_exhausted.
        status=int(fields.get(b"status", b"500")),
        code=fields.get(b"code", ATTEMPTS_EXHAUSTED.encode()).decode() or None,
        error=fields.get(b"error", b"").decode(errors="replace")), job)


async def read(redis: Redis, keys: Keys, providers: list[str]) -> list[Found]:
    """Every dead letter of `providers`, oldest first within each provider."""
    found: list[Found] = []
    for provider in providers:
        for entry_id, fields in await redis.xrange(keys.dead_letters(provider)):
            try:
                found.append(_found(provider, entry_id, fields))
            except (KeyError, ValueError, msgspec.DecodeError):  # written by a version we cannot read
                continue
    return found


async def replay(redis: Redis, scripts: QueueScripts, keys: Keys, config: Config, router: Router,
                 dead: Found) -> Job:
    """Queue the job again (module docstring) and drop its dead letter; the job as queued, or raise
    the BrokerError that kept it out (its dead letter stays)."""
    old = dead.job
    tenant = config.tenants.get(old.tenant)
    if tenant is None:
        raise InvalidRequest(f"tenant {old.tenant!r} is no longer configured")
    server = config.server
    job = await job_factory.build(
        router, redis, keys, old.tenant, tenant, old.key, old.payload, lane=old.lane,
        timeout_s=server.async_timeout_s if old.async_ttl_s else server.request_timeout_s,
        reply_to=keys.replies("async"),  # nobody listens there, as for async jobs
        headers={}, async_ttl_s=old.async_ttl_s, job_id=old.id, client_request_id=old.client_request_id)
    # Charged against the budget periods it was held to, if they still exist (ledger.lua); nothing is
    # held for it now, so nothing is given back.
    job.budget_counters = old.budget_counters
    providers = {old.provider, job.provider, *(t.provider for t in job.fallbacks)}
    pipe = redis.pipeline(transaction=False)
    pipe.delete(keys.result(old.id), keys.event_log(old.id), keys.events(old.id), keys.race(old.id))
    for provider in providers:
        pipe.delete(keys.cancelled(provider, old.id))
    await pipe.execute()
    job, _ = await enqueue_first(scripts, keys, config, job)
    if job.async_ttl_s:
        await async_jobs.submit(redis, keys, job)  # after the XADD: a refused replay leaves no queued record
    await redis.xdel(keys.dead_letters(dead.letter.provider), dead.letter.entry)
    return job


