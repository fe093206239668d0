"""Hedged requests: when a job's deployment is slow to start answering, a second attempt races it
on another deployment, and the first to answer wins (config: a model group's `hedge_after_ms`).

    primary  no first token `hedge_after_ms` after its worker started it (or the deployment's
             measured p95) → race.lua `start` (two attempts live) → the hedge copy is queued on the
             job's next candidate of another provider: same id, reply channel and deadline,
             `racing_with` naming the primary's provider
    either   from then on its first chunk (stream) or its answer (non-stream) waits until it has
             claimed the race; the first claim wins. The winner's chunks go out, and it cancels the
             other attempt as a client's disconnect would (marker + cancel channel), which aborts
             that upstream call
    loser    acknowledges its entry without answering, like a failover's hand-off
    failure  an attempt that fails or is cancelled before anyone won quits the race; it answers (or
             fails over) only if no other attempt is still running, so the client gets one answer

Tokens: only the winner's usage settles the tenant's token bucket; the loser is cancelled before
anything of it reached the client, and answers nothing.

The hedge goes to another provider so the two attempts never share a worker (which keys its jobs
by id) nor a cancel channel (a cancel names the job id only).

Cost on the plain path: none. Jobs of groups without `hedge_after_ms` get no Racer, and a hedged
job answered before its hedge was due never touches Redis for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from broker.config import Config
from broker.errors import BrokerError
from broker.keys import Keys
from broker.queue.jobs import HEDGE_P95, Job, Target
from broker.queue.streams import QueueScripts, cancel, enqueue

log = logging.getLogger(__name__)

Emit = Callable[[bytes], None]

# `hedge_after_ms: p95` waits for this many measures of a deployment before it hedges at all...
MIN_SAMPLES = 20
# ...and keeps the latest this many per deployment and kind (stream: time to first token; else total).
WINDOW = 512
# A race's record outlives the job's deadline by this much (a late quit still finds it).
RACE_TTL_MARGIN_MS = 60_000


class LatencyWindow:
    """Recent latencies of the deployments this worker calls, for `hedge_after_ms: p95`.

    Kept per worker process: each worker measures what it serves, which for a provider's pool
    of workers converges on the same figure without a Redis round trip per job.
    """

    def __init__(self) -> None:
        self._samples: dict[tuple[str, str, bool], deque[float]] = {}

    def observe(self, job: Job, seconds: float) -> None:
        key = (job.provider, job.upstream_model, job.streams)
        window = self._samples.get(key)
        if window is None:
            window = self._samples[key] = deque(maxlen=WINDOW)
        window.append(seconds)

    def p95(self, job: Job) -> float | None:
        window = self._samples.get((job.provider, job.upstream_model, job.streams))
        if window is None or len(window) < MIN_SAMPLES:
            return None
        return sorted(window)[int(0.95 * (len(window) - 1))]


class Hedging:
    """What a worker's racers share: Redis, the scripts, the latency window, their background tasks."""

    def __init__(self, redis: Redis, scripts: QueueScripts, keys: Keys, config: Config) -> None:
        self.redis = redis
        self.scripts = scripts
        self.keys = keys
        self.config = config
        self.latency = LatencyWindow()
        self._background: set[asyncio.Task[Any]] = set()

    def racer(self, job: Job, forward: Emit, on_lost: Callable[[], None]) -> Racer | None:
        """The job's racer, or None when it can never race (its group does not hedge)."""
        if not job.hedge_after_ms and not job.racing_with:
            return None
        return Racer(self, job, forward, on_lost)

    def observe(self, job: Job, seconds: float) -> None:
        if job.hedge_after_ms == HEDGE_P95:
            self.latency.observe(job, seconds)

    def delay_s(self, job: Job) -> float | None:
        if job.hedge_after_ms == HEDGE_P95:
            return self.latency.p95(job)
        return job.hedge_after_ms / 1000 if job.hedge_after_ms > 0 else None

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class Racer:
    """One attempt of a job that may race another (see the module docstring)."""

    def __init__(self, hedging: Hedging, job: Job, forward: Emit, on_lost: Callable[[], None]) -> None:
        self.hedging = hedging
        self.job = job
        self._forward = forward  # the chunk on its way to the client
        self._on_lost = on_lost  # aborts this attempt (a stream that lost its claim)
        self._race_key = hedging.keys.race(job.id)
        # The other attempt's provider, once there is a race; until then chunks go straight out.
        self.other: str | None = job.racing_with or None
        self.won: bool | None = None
        self._first = False  # a first chunk arrived: too late to hedge
        self._held: list[bytes] = []
        self._claim: asyncio.Task[bool] | None = None
        self._hedge: asyncio.Task[None] | None = None
        self._queueing = False  # the hedge is being queued: a quit must wait for the outcome

    async def start(self) -> bool:
        """Before the call. Arms the hedge of a primary; False: a race this job already lost (a
        re-delivered primary whose hedge won meanwhile), so it must not run."""
        if self.other is not None:
            return True  # the hedge copy: it races, and hedges nothing itself
        if self.job.attempt > 1 and not await self._rejoin():
            return False
        delay_s = self.hedging.delay_s(self.job)
        if self.other is None and delay_s is not None and self._target() is not None:
            self._hedge = asyncio.create_task(self._hedge_after(delay_s))
        return True

    def emit(self, event: bytes) -> None:
        self._first = True
        if self.other is None or self.won:
            self._forward(event)
            return
        self._held.append(event)  # out once the race is ours
        if self._claim is None:
            self._claim = asyncio.create_task(self._claim_race(from_stream=True))

    async def wins(self) -> bool:
        """Before answering: whether this attempt may (it raced nobody, or it won)."""
        await self._settle_hedge()
        if self.other is None:
            return True
        if self._claim is None:
            self._claim = asyncio.create_task(self._claim_race(from_stream=False))
        return await asyncio.shield(self._claim)

    async def quit(self) -> bool:
        """This attempt stops before winning (it failed, or was cancelled). True: it answers all the
        same (it had won, or no other attempt is still running); False: the other one answers."""
        await self._settle_hedge()
        if self.other is None:
            return True
        if self._claim is not None:
            return await asyncio.shield(self._claim)
        try:
            return bool(await self.hedging.scripts.race(keys=[self._race_key], args=["quit", self.job.provider]))
        except RedisError:
            return True  # cannot tell: answering is the safer way to be wrong

    def close(self) -> None:
        """The attempt is over: a hedge still waiting for its time is not needed."""
        if self._hedge is not None and not self._queueing:
            self._hedge.cancel()

    # ---------------------------------------------------------------- internals

    def _target(self) -> Target | None:
        return next((t for t in self.job.fallbacks if t.provider != self.job.provider), None)

    async def _hedge_after(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        target = self._target()
        if self._first or target is None:
            return
        job, hedges = self.job, self.hedging
        # Synchronously with the check above: every chunk from now on waits for a claim.
        self.other, self._queueing = target.provider, True
        fallbacks = job.fallbacks
        rest = [t for t in fallbacks if t is not target]
        hedge = msgspec.structs.replace(job, provider=target.provider, upstream_model=target.model,
                                        max_context=target.max_context, fallbacks=rest, attempt=1,
                                        hedge_after_ms=0, racing_with=job.provider, hedges=job.hedges + 1)
        job.fallbacks, job.hedges = rest, job.hedges + 1  # the hedge's deployment is taken
        try:
            await hedges.scripts.race(keys=[self._race_key], args=[
                "start", job.provider, target.provider, int(job.deadline * 1000) + RACE_TTL_MARGIN_MS])
            await enqueue(hedges.scripts, hedges.keys, hedges.config, hedge)
            log.info("job %s: no first token from %s after %.0f ms; hedged on %s", job.id, job.served_by,
                     delay_s * 1000, hedge.served_by)
        except (BrokerError, RedisError) as exc:  # no room or no worker there: the race is ours alone
            log.info("job %s: could not hedge on %s: %s", job.id, hedge.served_by, exc)
            job.fallbacks, job.hedges = fallbacks, job.hedges - 1
            with suppress(RedisError):
                await hedges.scripts.race(keys=[self._race_key], args=["quit", target.provider])
        finally:
            self._queueing = False

    async def _settle_hedge(self) -> None:
        """Let a hedge being queued finish queueing (the race counts it), or drop one not yet due."""
        if self._hedge is None or self._hedge.done():
            return
        if not self._queueing:
            self._hedge.cancel()
            return
        with suppress(Exception):
            await asyncio.shield(self._hedge)

    async def _claim_race(self, *, from_stream: bool) -> bool:
        try:
            won = bool(await self.hedging.scripts.race(keys=[self._race_key], args=["claim", self.job.provider]))
        except RedisError as exc:
            log.warning("job %s: cannot claim its race: %s", self.job.id, exc)
            won = False
        self.won = won
        held, self._held = self._held, []
        if won:
            for event in held:
                self._forward(event)
            assert self.other is not None
            self.hedging.spawn(self._cancel_other(self.other))
        elif from_stream:
            self._on_lost()
        return won

    async def _cancel_other(self, provider: str) -> None:
        with suppress(RedisError):  # the loser then just finds its claim taken
            await cancel(self.hedging.redis, self.hedging.keys, [provider], self.job.id, self.job.deadline)

    async def _rejoin(self) -> bool:
        """A re-delivered primary: back in the race its first delivery started, if it did."""
        primary, hedge, won = await self.hedging.scripts.race(keys=[self._race_key],
                                                              args=["state", self.job.provider])
        if primary is None or hedge is None:
            return True
        self.other = hedge.decode()
        if won is not None:
            self.won = won.decode() == self.job.provider
            return self.won
        return True
