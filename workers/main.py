"""`llm-broker worker`: one process serving one provider's stream until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from pathlib import Path

from broker.config import Config
from broker.store.connection import connect
from workers.loop import Worker

log = logging.getLogger(__name__)


async def serve(config: Config, provider: str, *, concurrency: int | None = None, burst: bool = False,
                health_file: Path | None = None) -> int:
    redis = connect(config.redis_url)
    worker = Worker(config, provider, redis, concurrency=concurrency, burst=burst, health_file=health_file)
    # What start-up made (modules, config, clients) lives as long as the process: out of the cyclic
    # collector's sight, so its full collections walk only what jobs allocate
    # (https://docs.python.org/3/library/gc.html#gc.freeze).
    gc.freeze()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # First signal: stop pulling, finish what is in flight. Both end the process cleanly.
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await redis.aclose()
    log.info("worker stopped after %d jobs", worker.jobs_done)
    return worker.jobs_done
