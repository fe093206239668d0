"""What every route needs, built once per API process in the app's lifespan."""

from __future__ import annotations

import time
import uuid

from redis.asyncio import BlockingConnectionPool, Redis

from api.auth import Authenticator
from broker.config import Config
from broker.keys import Keys
from broker.replies import ReplyRouter
from broker.routing import Router

# Enough for bursts of concurrent XADDs; requests wait for a connection rather
# than opening thousands (waiting requests hold no connection at all).
REDIS_POOL_SIZE = 64


class BrokerState:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.keys = Keys(config.namespace)
        self.instance = uuid.uuid4().hex[:12]
        self.started = int(time.time())
        self.auth = Authenticator(config)
        self.router = Router(config)
        self.redis = Redis(
            connection_pool=BlockingConnectionPool.from_url(config.redis_url, max_connections=REDIS_POOL_SIZE, timeout=5)
        )
        self.replies = ReplyRouter(self.redis, self.keys.replies(self.instance))

    async def start(self) -> None:
        await self.replies.start()

    async def aclose(self) -> None:
        await self.replies.stop()
        await self.redis.aclose()
