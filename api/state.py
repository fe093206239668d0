"""What every route needs, built once per API process in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from api.auth import Authenticator
from api.live_keys import LiveKeys
from api.refusals import Refusals
from broker.batches.files import open_store
from broker.cache.exact import ResponseCache
from broker.config import Config
from broker.keys import Keys
from broker.limits.ratelimit import Deferred, Limiter
from broker.ops import redaction, rollups
from broker.queue import durability, job_events
from broker.queue.jobs import Job
from broker.queue.spool import Spool
from broker.queue.replies import ReplyRouter
from broker.queue.streams import QueueScripts, cancel
from broker.routing.router import Router
from broker.store import key_migration
from broker.store.connection import connect

# Enough for bursts of concurrent XADDs; requests wait for a connection rather
# than opening thousands (waiting requests hold no connection at all).
REDIS_POOL_SIZE = 64
EVENT_READERS = 256


class BrokerState:
    def __init__(self, config: Config) -> None:
        self.config = config
        redaction.install(config)  # the API logs what workers send, and its own upstream-free errors
        self.keys = Keys(config.namespace)
        self.instance = uuid.uuid4().hex[:12]
        self.started = int(time.time())
        self.auth = Authenticator(config)
        self.router = Router(config)
        self.redis = connect(config.redis_url, max_connections=REDIS_POOL_SIZE, timeout=5)
        self.replies = ReplyRouter(self.redis, self.keys.replies(self.instance), self.keys.result,
                                   max_buffered_bytes=config.server.stream_buffer_bytes)
        self.live_keys = LiveKeys(self.redis, self.keys, config, self.auth)  # keys made at run time
        self.replies.also(self.keys.api_keys_changed(), self.live_keys.notify)
        # Clients reading a job's event log (api/routes/jobs.py) block in XREAD: a pool of their own,
        # so they can never starve the request path of connections.
        self.readers = connect(config.redis_url, max_connections=EVENT_READERS, timeout=5)
        self.limiter = Limiter(self.redis, self.keys)
        self.files = open_store(config.batches)  # the Batch API's file bodies: a directory or a bucket
        # Uploads that travel with a job by reference (audio): a directory the API and the provider
        # workers share, even when batch files live in a bucket (README, Kubernetes).
        self.spool = Spool(config.batches.store_dir)
        self.scripts = QueueScripts(self.redis)
        self.durable = durability.of(config.redis)  # None unless `redis.durability: replicated`
        # Admissions waiting to ride with their job's first enqueue (api/limits.py `admitted`), by job id.
        self.admitting: dict[str, Deferred] = {}
        # The response cache, if configured, and this process's flights of identical requests (api/cached.py).
        self.cache = ResponseCache(self.redis, self.keys, config, config.cache) if config.cache is not None else None
        self.flights: dict[str, asyncio.Future[bytes | None]] = {}
        # The console's series (broker/ops/rollups.py) and the refusals it lists; none without it.
        self.rollups = rollups.enabled(config)
        self.refusals = Refusals(self.redis, self.keys, config.usage) if self.rollups else None
        # Cleanup that must reach Redis even when its request was cancelled: held here so the
        # tasks are not garbage-collected mid-flight, and awaited before Redis is closed.
        self.background: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.scripts.load()
        await key_migration.migrate(self.redis, self.keys, self.config.redis_url)  # before any admission
        await self.limiter.load()
        if self.cache is not None:
            await self.cache.load()
        await self.live_keys.start()
        await self.replies.start()
        if self.refusals is not None:
            self.refusals.start()

    def lua_scripts(self) -> dict[str, AsyncScript]:
        """Every script this process runs, by name (what /readyz checks Redis has)."""
        return {**self.scripts.named(), **self.limiter.named(), **(self.cache.named() if self.cache else {})}

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` in its own task, outside the caller's cancellation.

        A client that disconnects cancels its request's task (Starlette cancels
        the stream's scope), and every later `await` in that task is cancelled
        again at once: cleanup awaited there never reaches Redis. A task of its
        own finishes whatever happens to the request.
        """
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def cancel_job(self, job: Job, *, grace_s: float = 0.0) -> None:
        """The client left: drop its job if still queued, abort it if running (never blocks the caller).

        On every provider it may be at by now: a failover moves it down its candidates, a hedge
        races it on one of them. With `grace_s`, only if no client resumed its stream by then.
        """
        providers = [job.provider, *(target.provider for target in job.fallbacks)]
        if grace_s > 0:
            self.spawn(job_events.cancel_unless_resumed(self.redis, self.keys, providers, job.id, job.deadline,
                                                        grace_s))
        else:
            self.spawn(cancel(self.redis, self.keys, providers, job.id, job.deadline))

    async def aclose(self) -> None:
        if self.background:  # releases and cancellations still on their way to Redis
            await asyncio.wait(set(self.background), timeout=5)
        if self.refusals is not None:
            with contextlib.suppress(RedisError):
                await self.refusals.aclose()
        await self.live_keys.stop()
        await self.replies.stop()
        await self.readers.aclose()
        await self.redis.aclose()
        await self.files.aclose()
