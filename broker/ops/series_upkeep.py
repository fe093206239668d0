"""What a worker does for the console besides its jobs (with `admin.rollups` on), every
`admin.queue_sample_s`: sample its provider's queues (broker/ops/queue_series.py) and, once an hour,
fold the hour just closed into the per-hour series (broker/ops/rollups.py `fold_closed`). At start it
folds the last day's hours too, so hours no worker was up to fold are not missing from the 30-day charts.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from broker.config import Config
from broker.keys import Keys
from broker.ops import queue_series, rollups

log = logging.getLogger(__name__)


async def run(redis: Redis, keys: Keys, config: Config, provider: str) -> None:
    """Until cancelled; Redis away skips a round, never ends it."""
    folded_until, hours = 0, 24
    while True:
        now = time.time()
        try:
            await queue_series.sample(redis, keys, config, provider, now)
            if (now - rollups.FOLD_AFTER_S) // 3600 > folded_until:
                await rollups.fold_closed(redis, keys, config.tenants, now, hours=hours)
                folded_until, hours = int(now - rollups.FOLD_AFTER_S) // 3600, 1
        except RedisError as exc:
            log.debug("console upkeep skipped a round: %s", exc)
        await asyncio.sleep(config.admin.queue_sample_s if config.admin else 10.0)
