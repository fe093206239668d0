"""Job queues on Redis Streams: admission + enqueue, fair pulls, heartbeats, reclaim.

Each provider has one stream per (lane, tenant) — `Keys.queue` — each with the
consumer group "workers", so a job goes to exactly one worker. The steps that
must be atomic are Lua scripts (broker/store/lua/), registered once:

    enqueue.lua  API: live workers? room before the deadline? → XADD, mark the
                 tenant active, count the backlog, ring the workers' bell (on one
                 Redis with the request's admission: admit_enqueue.lua)
    pull.lua     worker: lanes by weighted round robin, tenants in a lane by
                 round robin, one job per turn; drops cancelled jobs; measures
                 the drain rate while work waits
    finish.lua   worker: XACK, XDEL, service times (pull.lua retires empty streams)
                 (the reply, the result and the ledger ride beside it: broker/queue/outbox.py)
    reclaim.lua  worker: XAUTOCLAIM what dead workers left, with delivery counts

Why per-tenant streams: a single FIFO per lane cannot let tenant B pass a
1,000-job backlog of tenant A; per-tenant streams with round robin can, and
an empty stream is deleted (by the next pull that meets it), so idle tenants cost no memory.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from broker.config import Config, QueueSettings
from broker.errors import BrokerError, CircuitOpen, NotReplicated, RateLimited, Unavailable
from broker.keys import LANES, STREAM_MAXLEN, WORKER_GROUP, Keys
from broker.limits.ratelimit import RECONCILE, Deferred
from broker.queue import durability
from broker.queue.jobs import Job, encode_queued
from broker.routing import failover
from broker.store.scripts import composed, evalsha_into, lua_script, publish_into, resend_unknown


# How long the API takes a live worker it saw at enqueue for granted (enqueue.lua's liveness check skipped):
# a worker counts as live for `queue.worker_ttl_s` after its last heartbeat anyway, so a crashed one is
# trusted that long already; this adds at most a second to a worker that left cleanly (its heartbeat
# removed), and saves one command on every other request.
LIVE_MEMO_S = 1.0


class QueueScripts:
    """The Lua scripts a job's way through the queue runs, registered once per Redis client (EVALSHA
    afterwards). `reconcile` is the rate limiter's, here because it rides in the worker's finish pipeline;
    `response_keep` a stored Response's (broker/queue/stored_responses.py), written there too."""

    def __init__(self, redis: Redis) -> None:
        self.enqueue: AsyncScript = redis.register_script(lua_script("enqueue"))
        self.pull: AsyncScript = redis.register_script(lua_script("pull"))
        self.finish: AsyncScript = redis.register_script(lua_script("finish"))
        self.ledger: AsyncScript = redis.register_script(lua_script("ledger"))
        self.reclaim: AsyncScript = redis.register_script(lua_script("reclaim"))
        self.reconcile: AsyncScript = redis.register_script(RECONCILE)
        self.circuit: AsyncScript = redis.register_script(lua_script("circuit"))
        self.race: AsyncScript = redis.register_script(lua_script("race"))
        self.response_keep: AsyncScript = redis.register_script(lua_script("response_keep"))
        # finish, reconcile and ledger in one call, where their keys may meet (not a Cluster): outbox.py
        self.job_end: AsyncScript = redis.register_script(composed("job_end", "finish", "reconcile", "ledger"))
        # admit and enqueue in one call, on one Redis (`enqueue`)
        self.admit_enqueue: AsyncScript = redis.register_script(composed("admit_enqueue", "admit", "enqueue"))
        # One Redis, not a Cluster: scripts may touch keys of any hash tag (job_end, admit_enqueue).
        self.one_redis = not isinstance(redis, RedisCluster)
        # provider -> when (monotonic s) enqueue.lua last found a live worker for it (LIVE_MEMO_S)
        self.live_seen: dict[str, float] = {}

    def named(self) -> dict[str, AsyncScript]:
        return {"enqueue": self.enqueue, "pull": self.pull, "finish": self.finish, "ledger": self.ledger,
                "reclaim": self.reclaim, "reconcile": self.reconcile, "circuit": self.circuit, "race": self.race,
                "response_keep": self.response_keep, "job_end": self.job_end, "admit_enqueue": self.admit_enqueue}

    async def load(self) -> None:
        """Load every script now (pipelines use EVALSHA directly and cannot load on a miss)."""
        for script in self.named().values():
            await script.registered_client.script_load(script.script)


class Refused(Exception):
    """The admission sent with an enqueue (`admitting`) refused the request: nothing was charged or queued.
    Not a BrokerError, so no failover takes it for a candidate's refusal."""

    def __init__(self, error: BrokerError) -> None:
        super().__init__(error.message)
        self.error = error


async def enqueue(scripts: QueueScripts, keys: Keys, config: Config, job: Job,
                  admitting: Deferred | None = None,
                  durable: durability.Replicated | None = None) -> bytes:
    """Admit and enqueue, or raise: 503 when no worker serves the provider or its circuit is open
    (broker/store/lua/circuit.lua), 429 when the lane is full; with `durable` (the API's, when
    `redis.durability` is `replicated`), 503 `not_replicated` when too few replicas took the job.

    `admitting`: the request's admission (broker/limits/admission.py `prepare`), sent in the same call
    (admit_enqueue.lua, one Redis only); settled there, or Refused raised before anything is queued.

    Before a provider's drain rate has ever been measured, each live worker is assumed to finish
    its configured `concurrency` jobs every `assumed_service_s`.
    """
    p, queue = job.provider, config.queue
    cold_rate_per_worker = config.providers[p].concurrency / queue.assumed_service_s
    ms_left = int((job.deadline - time.time()) * 1000)
    probe_ms = int(config.circuit.open_s * 1000)
    now = time.monotonic()
    trusted = now - scripts.live_seen.get(p, -LIVE_MEMO_S) < LIVE_MEMO_S
    queue_keys = [keys.queue(p, job.lane, job.tenant), keys.active(p, job.lane), keys.backlog(p), keys.drain(p),
                  keys.workers(p), keys.circuit(p)]
    queued = encode_queued(job, keys.replies(""), queue.write_format)
    args = [job.tenant, job.lane, job.id, queued, ms_left, int(queue.worker_ttl_s * 1000),
            queue.min_queue, STREAM_MAXLEN, keys.bell(p), len(LANES), *LANES,
            *(queue.lane_weights[lane] for lane in LANES), cold_rate_per_worker, job.upstream_model, probe_ms,
            "1" if trusted else "0"]
    script, script_keys, script_args = scripts.enqueue, queue_keys, args
    if admitting is not None:
        script, script_keys = scripts.admit_enqueue, [*admitting.keys, *queue_keys]
        script_args = [len(admitting.keys), len(admitting.args), *admitting.args, *args]
    acks = 0
    if durable is None:
        answer = await script(keys=script_keys, args=script_args)
    else:
        answer, acks = await durability.run_script(script.registered_client, durable, script, script_keys,
                                                   script_args)
    result = answer
    if admitting is not None:
        try:
            admitting.settle(answer[0])
        except BrokerError as refused:
            raise Refused(refused) from None
        result = answer[1]
    if durable is not None and result[0] == b"ok" and acks < durable.replicas:
        # Admitted (NotQueued refunds it) and queued, but not on enough replicas: withdrawn, never "accepted".
        await cancel(script.registered_client, keys, [p], job.id, job.deadline)  # pull.lua drops it
        raise durable.not_replicated(acks)
    status = result[0].decode()
    if status != "no_workers" and not trusted:  # every answer but that one saw a live worker
        scripts.live_seen[p] = now
    if status == "ok":
        entry_id: bytes = result[1]
        return entry_id
    if status == "no_workers":
        scripts.live_seen.pop(p, None)
        raise Unavailable(f"No worker is serving provider {p!r} right now; please retry shortly.",
                          retry_after_s=queue.heartbeat_interval_s)
    if status == "open" and len(result) > 2:  # cooling down after its upstream's 429
        raise RateLimited(f"Deployment {p}/{job.upstream_model} is rate limited by its upstream; please retry "
                          "after the time given.", retry_after_s=int(result[1]) / 1000)
    if status == "open":
        raise CircuitOpen(f"Deployment {p}/{job.upstream_model} failed too often lately and is skipped for now.",
                          retry_after_s=int(result[1]) / 1000)
    retry_after_ms, ahead, rate, service_ms = int(result[1]), int(result[2]), float(result[3]), float(result[4])
    work = f" and take about {service_ms / 1000:.1f}s each" if service_ms > 0 else ""
    raise RateLimited(
        f"The {job.lane!r} queue of provider {p!r} is full: the {ahead} requests ahead of this one drain at "
        f"about {rate:.1f}/s{work}, so this one would finish past its deadline. Please retry later.",
        code="queue_full", retry_after_s=max(retry_after_ms / 1000, 1.0),
    )


async def enqueue_first(scripts: QueueScripts, keys: Keys, config: Config, job: Job,
                        admitting: Deferred | None = None,
                        durable: durability.Replicated | None = None) -> tuple[Job, bytes]:
    """Queue `job` on the first of its candidates that takes it: one refusing it (no live worker,
    circuit open, queue full) passes it to the next, as a failed call would (broker/routing/failover.py).
    Returns the job as queued and its entry id, or raises the error that lists every refusal.
    `admitting` (see `enqueue`) rides with the first candidate's call; the request stays admitted after."""
    while True:
        try:
            return job, await enqueue(scripts, keys, config, job, admitting, durable)
        except NotReplicated:
            raise  # Redis's fault, not the candidate's: the next one shares the same replicas
        except BrokerError as refused:
            admitting = None
            nxt = failover.advance(job, refused)
            if nxt is None:
                raise failover.final_error(job, refused) from None
            job = nxt


async def hand_off(scripts: QueueScripts, keys: Keys, job: Job, entry_id: bytes, stream: str) -> None:
    """Acknowledge and delete a job's entry without answering it: it is queued elsewhere now (failover)."""
    await scripts.finish(keys=[stream, keys.active(job.provider, job.lane), keys.drain(job.provider),
                               keys.circuit(job.provider)],
                         args=[entry_id, job.tenant, 0, job.upstream_model])


class Pulled:
    __slots__ = ("stream", "entry_id", "job_id", "payload", "delivered")

    def __init__(self, stream: str, entry_id: bytes, job_id: str, payload: bytes, delivered: int = 1) -> None:
        self.stream = stream
        self.entry_id = entry_id
        self.job_id = job_id
        self.payload = payload
        self.delivered = delivered


def _fields(raw: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(raw[::2], raw[1::2]))


async def pull(scripts: QueueScripts, keys: Keys, queue: QueueSettings, provider: str, consumer: str,
               count: int) -> list[Pulled]:
    weights = [queue.lane_weights[lane] for lane in LANES]
    rows = await scripts.pull(
        keys=[keys.sched(provider), keys.backlog(provider), keys.drain(provider)],
        args=[consumer, count, len(LANES), *LANES, *weights],
    )
    pulled = []
    for stream, entry_id, raw in rows:
        fields = _fields(raw)
        pulled.append(Pulled(stream.decode(), entry_id, fields[b"id"].decode(), fields[b"job"]))
    return pulled


async def reclaim(scripts: QueueScripts, redis: Redis, keys: Keys, queue: QueueSettings, provider: str,
                  consumer: str, count: int) -> list[Pulled]:
    """Entries idle past `claim_idle_s` on any of the provider's streams, now ours."""
    claimed: list[Pulled] = []
    for stream, active, tenant in await _queues(redis, keys, provider):
        rows = await scripts.reclaim(keys=[stream, active], args=[consumer, int(queue.claim_idle_s * 1000), count,
                                                                 tenant])
        for entry_id, raw, delivered in rows:
            fields = _fields(raw)
            claimed.append(Pulled(stream, entry_id, fields[b"id"].decode(), fields[b"job"], int(delivered)))
    return claimed


async def heartbeat(redis: Redis, keys: Keys, provider: str, consumer: str,
                    in_flight: dict[str, list[bytes]]) -> None:
    """Say we are alive, and reset the idle time of the entries we hold (so nobody reclaims them)."""
    seconds, micros = await redis.time()  # the server's clock, which enqueue.lua compares against
    now = seconds * 1000 + micros // 1000
    pipe = redis.pipeline(transaction=False)
    pipe.zadd(keys.workers(provider), {consumer: now})
    pipe.zremrangebyscore(keys.workers(provider), "-inf", now - 60_000)
    for stream, entry_ids in in_flight.items():
        if entry_ids:
            pipe.xclaim(stream, WORKER_GROUP, consumer, 0, list[Any](entry_ids), justid=True)
    for result in await pipe.execute(raise_on_error=False):
        # NOGROUP: the stream is gone with its group: its jobs finished (pull.lua, or a previous
        # release's finish.lua, retired the emptied stream after the snapshot of held entries was
        # taken) or Redis lost its data.
        # Nothing is left to keep alive there; any other error is real.
        if isinstance(result, Exception) and not str(result).startswith("NOGROUP"):
            raise result


async def cancelled(redis: Redis, keys: Keys, provider: str, job_ids: list[str]) -> list[str]:
    """Those of `job_ids` whose cancellation marker is set (a cancel message may have been missed)."""
    if not job_ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.exists(keys.cancelled(provider, job_id))
    return [job_id for job_id, marked in zip(job_ids, await pipe.execute()) if marked]


CANCEL = lua_script("cancel")


async def cancel(redis: Redis, keys: Keys, providers: list[str], job_id: str, deadline: float) -> None:
    """Drop the job if still queued on any of `providers` (cancel.lua: its marker, which pull.lua looks
    for while the backlog hash's `~cancels` says one may live), abort it where it runs."""
    ttl_ms = max(int((deadline - time.time()) * 1000), 1)
    script = redis.register_script(CANCEL)  # rare (a client that left): no need to keep it registered
    pipe = redis.pipeline(transaction=False)
    queued = []
    for provider in dict.fromkeys(providers):
        queued.append(evalsha_into(pipe, script, [keys.cancelled(provider, job_id), keys.backlog(provider)],
                                   [ttl_ms]))
        publish_into(pipe, keys.cancel_channel(provider), job_id.encode())  # the running worker aborts it
    results = await pipe.execute(raise_on_error=False)
    await resend_unknown(queued, results)
    for result in results:
        if isinstance(result, Exception):
            raise result


async def _queues(redis: Redis, keys: Keys, provider: str) -> list[tuple[str, str, str]]:
    """(stream, its lane's active set, tenant) of every tenant active in one of the provider's lanes."""
    queues = []
    for lane in LANES:
        tenants = await redis.zrange(keys.active(provider, lane), 0, -1)
        queues += [(keys.queue(provider, lane, t.decode()), keys.active(provider, lane), t.decode())
                   for t in tenants if isinstance(t, bytes)]
    return queues


async def leave(redis: Redis, keys: Keys, provider: str, consumer: str, scripts: QueueScripts | None = None) -> None:
    """A worker that stops: out of the live set, and the streams its jobs left empty retired (reclaim.lua,
    claiming nothing), which no live worker's heartbeat may be left to do."""
    await redis.zrem(keys.workers(provider), consumer)
    if scripts is not None:
        for stream, active, tenant in await _queues(redis, keys, provider):
            await scripts.reclaim(keys=[stream, active], args=[consumer, 0, 0, tenant])
