"""How a model group orders its deployments (`strategy:` in config): the first serves, the rest
are its failover order (broker/routing/failover.py).

- `priority`: as listed.
- `weighted`: by `weight`, at random (deployment i first with probability weight_i / sum).
- `cost`: cheapest first for this request's estimated tokens, at the deployments' prices
  (broker/money/pricing.py; unpriced ones last).
- `latency`: lowest moving average of time to first token (streams) or total time (the rest),
  as the workers measure it (finish.lua keeps both per deployment in the provider's drain hash).
- `least-busy`: fewest calls in flight across all workers (workers keep the calls running on a
  deployment of such a group in a ZSET scored by deadline, so a crashed worker's calls expire).

Only `latency` and `least-busy` read Redis, in one pipeline, and only for groups that use them:
the plain request path pays nothing for strategies it does not use.

Keys read (broker/keys.py): `drain` (fields ttft:<model>, total:<model>), `busy` per deployment.
"""

from __future__ import annotations

import math
import random
import time

from redis.asyncio import Redis

from broker.config import Deployment, ModelGroup
from broker.keys import Keys
from broker.money.pricing import PriceBook
from broker.routing.capabilities import Request, estimate_search_units, estimate_tokens, output_limit_tokens

# Deployment → what its group's strategy compares (seconds, calls in flight); absent: not measured.
Stats = dict[tuple[str, str], float]
READS_REDIS = frozenset({"latency", "least-busy"})


def order(group: ModelGroup, req: Request, stats: Stats, prices: PriceBook) -> list[Deployment]:
    deployments = group.deployments
    if len(deployments) < 2:
        return deployments
    match group.strategy:
        case "weighted":
            # Weighted random order without replacement (Efraimidis-Spirakis).
            return sorted(deployments, key=lambda d: random.random() ** (1 / d.weight), reverse=True)
        case "cost":
            prompt, output, searches = estimate_tokens(req), output_limit_tokens(req), estimate_search_units(req)
            def cost(d: Deployment) -> float:  # an unpriced deployment is never taken for the cheapest
                price = prices.price(d.provider, d.model)
                return math.inf if price is None else price.estimate_nanos(prompt, output, searches)
            return sorted(deployments, key=cost)
        case "latency" | "least-busy":
            # Not yet measured counts as best: it gets tried, and so measured. Ties keep the listed order.
            return sorted(deployments, key=lambda d: stats.get((d.provider, d.model), 0.0))
    return deployments


async def fetch(redis: Redis, keys: Keys, group: ModelGroup, *, streams: bool) -> Stats:
    """What `group`'s strategy compares, for each of its deployments (empty if it compares nothing)."""
    if group.strategy not in READS_REDIS or len(group.deployments) < 2:
        return {}
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for d in group.deployments:
            if group.strategy == "latency":
                pipe.hget(keys.drain(d.provider), f"{'ttft' if streams else 'total'}:{d.model}")
            else:
                pipe.zremrangebyscore(keys.busy(d.provider, d.model), "-inf", now_ms)
                pipe.zcard(keys.busy(d.provider, d.model))
        found = await pipe.execute()
    if group.strategy == "least-busy":
        found = found[1::2]
    return {(d.provider, d.model): float(value) for d, value in zip(group.deployments, found) if value is not None}
