"""This API process's copy of the keys made at run time (broker/api_keys.py), kept current in the background.

Requests are authenticated from memory (`Authenticator.live`), so the request path pays no
Redis round trip for keys. The copy follows Redis two ways: every create and revoke publishes on
`api_keys_changed`, heard on the process's one pub/sub connection (broker/queue/replies.py), which
wakes the reload at once; and every RELOAD_S the version counter is read anyway, since a message
published while that connection was broken is lost. A reload reads every key only when the
version moved, so an idle process costs Redis one GET a second. Together: a new key works, and
a revoked one stops, within about RELOAD_S on every process, usually within milliseconds.

If Redis is unreachable the last copy keeps serving: keys already known keep working, and a key
revoked meanwhile stops when Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.auth import Authenticator, Principal
from broker import api_keys
from broker.config import Config
from broker.keys import Keys

log = logging.getLogger(__name__)

RELOAD_S = 1.0  # the safety net's period: the 2 s promise holds with one missed message and a slow reload


class LiveKeys:
    def __init__(self, redis: Redis, keys: Keys, config: Config, auth: Authenticator) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.auth = auth
        self.version = -1  # none loaded yet
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def notify(self, _message: bytes) -> None:
        """A pub/sub hook: a key was created or revoked somewhere."""
        self._changed.set()

    async def start(self) -> None:
        """Load the keys before the process serves (a key made before it started works at once)."""
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="live-keys")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), RELOAD_S)
            except asyncio.TimeoutError:
                pass
            self._changed.clear()  # before reading: a change after this wakes the next round
            try:
                await self.refresh()
            except RedisError as exc:
                if not self._failing:
                    log.warning("cannot refresh API keys from Redis (serving the last copy): %s", exc)
                self._failing = True

    async def refresh(self) -> None:
        if await api_keys.version(self.redis, self.keys) == self.version:
            self._failing = False
            return
        version, records = await api_keys.load(self.redis, self.keys)
        live = {}
        for digest, record in records.items():
            tenant = self.config.tenants.get(record.tenant)
            if tenant is None:  # its tenant was removed from this process's config: the key is dead with it
                continue
            live[digest] = Principal(record.tenant, tenant, record.name, record.limits(digest))
        self.auth.live = live  # one assignment: a request sees the old map or the new, never half of one
        self.version, self._failing = version, False
