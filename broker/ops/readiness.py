"""Whether this broker can serve requests: what `GET /readyz` reports (api/routes/health.py).

Ready means:
- Redis answers;
- the Lua scripts the API runs are loaded there. One that is not (Redis restarted and lost them)
  is loaded here: a probe that only reported it would keep traffic away from the very requests
  that would load it again, so only a script Redis refuses to load makes the broker unready;
- every provider serving a configured model has a live worker: a heartbeat within
  `queue.worker_ttl_s` on Redis's clock, as enqueue.lua counts them (none: its requests get 503).

The checks share one round trip (TIME, SCRIPT EXISTS and each provider's newest heartbeat in one
pipeline), so a probe every few seconds costs Redis next to nothing. What is missing is said in
words an operator can act on; no Redis error text, which may name hosts, is passed on.
"""

from __future__ import annotations

from collections.abc import Mapping

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from broker.config import Config
from broker.keys import Keys


def served_providers(config: Config) -> list[str]:
    """The providers some configured model sends requests to (passthrough aside)."""
    return sorted({d.provider for name in config.models if (group := config.group(name)) is not None
                   for d in group.deployments})


async def missing(redis: Redis, keys: Keys, config: Config, scripts: Mapping[str, AsyncScript]) -> list[str]:
    """What keeps the broker from serving, in words; [] when it is ready."""
    providers = served_providers(config)
    # Three round trips, not one pipeline: a cluster pipeline carries neither TIME nor SCRIPT EXISTS
    # (which a cluster client asks every primary).
    pipe = redis.pipeline(transaction=False)
    for provider in providers:
        pipe.zrange(keys.workers(provider), -1, -1, withscores=True)  # the newest heartbeat
    try:
        seconds, micros = await redis.time()
        loaded = await redis.script_exists(*(script.sha for script in scripts.values()))
        newest = await pipe.execute()
    except RedisError as exc:
        return [f"Redis does not answer ({type(exc).__name__})"]
    gaps: list[str] = []
    for (name, script), exists in zip(scripts.items(), loaded):
        if not exists:
            try:
                await redis.script_load(script.script)
            except RedisError as exc:
                gaps.append(f"Lua script '{name}' is not loaded in Redis and cannot be ({type(exc).__name__})")
    now_ms = seconds * 1000 + micros // 1000
    live_since = now_ms - config.queue.worker_ttl_s * 1000
    for provider, beats in zip(providers, newest):
        if not beats or beats[0][1] < live_since:
            gaps.append(f"no live worker for provider '{provider}'")
    return gaps
