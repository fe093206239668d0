"""Config checks the types cannot express: a Sentinel redis_url, names that become Redis key parts,
references between models, providers and tenants, keys, lanes and the queue's timings
(broker/config/model.py `validate`)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from broker.keys import LANES
from broker.routing.rules import check as check_rules
from broker.store.sentinel_url import SCHEME as SENTINEL_SCHEME
from broker.store.sentinel_url import parse_sentinel_url

if TYPE_CHECKING:
    from broker.config.model import Config, RedisSettings

# Provider and tenant names become parts of Redis keys and hash tags (broker/keys.py): no braces, no spaces.
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Sentinel or Cluster URL, found at load rather than at the first connection."""
    try:
        if url.startswith(SENTINEL_SCHEME):
            parse_sentinel_url(url)
        elif url.split("://", 1)[0].lower().endswith("+cluster"):
            from broker.store.connection import (
                cluster_nodes,  # here: it imports redis.asyncio, slow for the CLI
            )

            cluster_nodes(url)
    except ValueError as exc:
        return str(exc)
    return None


def durability_problem(url: str, redis: RedisSettings) -> str | None:
    """Why `redis.durability` cannot hold with this URL. WAIT counts the replicas of the one node its
    connection talks to. A job's end writes on its queue's and its job's nodes and PUBLISHes on the node
    of its API's channel; redis-py's cluster pipeline sends each node its commands in parallel, so the
    PUBLISH cannot follow another node's WAIT in one round trip (a second one would cost every end)."""
    if redis.durability == "replicated" and url.split("://", 1)[0].lower().endswith("+cluster"):
        return ("`replicated` needs one primary (a redis:// or redis+sentinel:// URL): Redis WAIT counts the "
                "replicas of one node, and a Cluster spreads a job's writes over several")
    return None


def first_problem(config: Config) -> str | None:
    """The first thing wrong with `config` that its types cannot say, ending with where: "... - at `$.path`"."""
    if problem := redis_url_problem(config.redis_url):
        return f"{problem} - at `$.redis_url`"
    if problem := durability_problem(config.redis_url, config.redis):
        return f"{problem} - at `$.redis.durability`"
    for section, names in (("providers", config.providers), ("tenants", config.tenants)):
        for name in names:
            if not NAME.fullmatch(name):
                return f"a name may hold only letters, digits, '_', '.' and '-' (1 to 64) - at `$.{section}.{name}`"
    for name, written in config.models.items():
        group, at = config.group(name), f"$.models.{name}" + ("" if isinstance(written, list) else ".deployments")
        assert group is not None
        if not group.deployments:
            return f"model has no deployments - at `{at}`"
        for i, dep in enumerate(group.deployments):
            if dep.provider not in config.providers:
                return (f"unknown provider {dep.provider!r} (known: {sorted(config.providers)})"
                        f" - at `{at}[{i}].provider`")
        for i, fallback in enumerate(group.fallbacks):
            if fallback not in config.models or fallback == name:
                return (f"fallbacks name other configured models; {fallback!r} is not one"
                        f" - at `$.models.{name}.fallbacks[{i}]`")
        if group.hedge_after_ms is not None:
            reach = [d for g in (group, *(config.group(f) for f in group.fallbacks)) if g for d in g.deployments]
            if len({d.provider for d in reach}) < 2:
                return (f"a hedge runs on a deployment of another provider, and this model (with its fallbacks) "
                        f"has only {reach[0].provider!r} - at `$.models.{name}.hedge_after_ms`")
    for name, written in config.models.items():
        if not isinstance(written, list) and written.cache is not None and config.cache is None:
            return (f"a model's cache needs the top-level `cache:` section, which holds its bounds"
                    f" - at `$.models.{name}.cache`")
    if problem := check_rules({name: g.rules for name in config.models if (g := config.group(name))}):
        return problem
    for name, tenant in config.tenants.items():
        seen: set[str] = set()
        for i, key in enumerate(tenant.api_keys()):
            where = f"$.tenants.{name}.keys[{i}]" + ("" if isinstance(tenant.keys[i], str) else ".key")
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", key.key):
                return f"keys must be 'sha256:<64 hex>' (see `llm-broker hash-key`) - at `{where}`"
            if key.name in seen:
                return f"duplicate key name {key.name!r} - at `$.tenants.{name}.keys[{i}].name`"
            seen.add(key.name)
        for model in tenant.models:
            if model not in config.models:
                return f"unknown model {model!r} - at `$.tenants.{name}.models`"
    tenant_keys = {key.key for tenant in config.tenants.values() for key in tenant.api_keys()}
    for i, admin_key in enumerate(config.admin.keys if config.admin else []):
        if admin_key in tenant_keys:  # one key would be both: the admin's power must not ride on a tenant's key
            return f"the admin key must not be a tenant's key too - at `$.admin.keys[{i}]`"
    if set(config.queue.lane_weights) != set(LANES) or min(config.queue.lane_weights.values()) < 1:
        return f"needs a weight >= 1 for each of {', '.join(LANES)} - at `$.queue.lane_weights`"
    for name, tenant in config.tenants.items():
        if tenant.lane not in LANES:
            return f"lane must be one of {', '.join(LANES)} - at `$.tenants.{name}.lane`"
    if config.queue.claim_idle_s <= 2 * config.queue.heartbeat_interval_s:
        return "must exceed twice heartbeat_interval_s, or live jobs get reclaimed - at `$.queue.claim_idle_s`"
    for name, provider in config.providers.items():
        if provider.concurrency < 1:
            return f"must be >= 1 - at `$.providers.{name}.concurrency`"
    return None
