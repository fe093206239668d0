"""Moves keys written under an older key layout to the current one, once per namespace.

Layout 2 gave usage, budget and batch keys a Redis Cluster hash tag (broker/keys.py):

    {ns}:usage:<tenant>:<day>                  →  {ns}:usage:{<tenant>}:<day>
    {ns}:budget:t:<tenant>:<period>[:holds]     →  {ns}:budget:{<tenant>}:t:<period>[:holds]
    {ns}:budget:k:<tenant>:<key>:<period>[...]  →  {ns}:budget:{<tenant>}:k:<key>:<period>[...]
    {ns}:batch:<id>[:inflight|:done|:lock]      →  {ns}:batch:{<id>}[...]

Without the move an upgrade would forget today's spend (a budget would start over) and the usage
history, and batches in progress would stop. Every process runs `migrate` at start; the first one
finds the old keys with SCAN and moves each in one script, merging into a new key that a process of
the new version already wrote (counts add up, so nothing is counted twice or lost), then sets
`{ns}:layout`; later starts cost one GET. A cluster never held the old layout: nothing to do there.
"""

from __future__ import annotations

import logging
import re

from redis.asyncio import Redis

from broker.keys import Keys
from broker.store.connection import is_cluster

log = logging.getLogger(__name__)

LAYOUT = 2
# One old key into its new name, atomically; 0 if another process moved it first.
MOVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local kind = redis.call('TYPE', KEYS[1])['ok']
if redis.call('EXISTS', KEYS[2]) == 0 or kind ~= redis.call('TYPE', KEYS[2])['ok'] then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return 1
end
local ttl = redis.call('PTTL', KEYS[1])
if kind == 'hash' then
  local fields = redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do redis.call('HINCRBY', KEYS[2], fields[i], fields[i + 1]) end
elseif kind == 'zset' then
  local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do redis.call('ZADD', KEYS[2], members[i + 1], members[i]) end
elseif kind == 'string' then
  redis.call('INCRBY', KEYS[2], redis.call('GET', KEYS[1]))
end
if ttl > redis.call('PTTL', KEYS[2]) then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('DEL', KEYS[1])
return 1
"""


def new_name(ns: str, key: str) -> str | None:
    """The layout-2 name of an old key of namespace `ns`, or None if `key` is not one. The old names
    are parsed here, where they are documented; the new ones come from broker/keys.py."""
    keys = Keys(ns)
    rest = key[len(ns) + 1:] if key.startswith(ns + ":") else ""
    if m := re.fullmatch(r"usage:([^:{]+):(\d{4}-\d{2}-\d{2})", rest):
        return keys.usage(m[1], m[2])
    if m := re.fullmatch(r"budget:t:([^:{]+):([dm]:[\d-]+(?::holds)?)", rest):
        return keys.budget(m[1], "t", m[2])
    if m := re.fullmatch(r"budget:k:([^:{]+):([^:]+):([dm]:[\d-]+(?::holds)?)", rest):
        return keys.budget(m[1], f"k:{m[2]}", m[3])
    if m := re.fullmatch(r"batch:(batch_[^:{]+)(?::(inflight|done|lock))?", rest):
        step_state = {None: keys.batch, "inflight": keys.batch_inflight, "done": keys.batch_done,
                      "lock": keys.batch_lock}
        return step_state[m[2]](m[1])
    return None


async def migrate(redis: Redis, keys: Keys, redis_url: str) -> int:
    """Move the namespace's old-layout keys (module docstring); how many were moved."""
    if is_cluster(redis_url) or int(await redis.get(keys.layout()) or 0) >= LAYOUT:
        return 0
    move = redis.register_script(MOVE)
    moved = 0
    for pattern in ("usage:*", "budget:*", "batch:*"):
        async for raw in redis.scan_iter(match=f"{keys.ns}:{pattern}", count=1000):
            key = raw.decode()
            target = new_name(keys.ns, key)
            if target is not None:
                moved += int(await move(keys=[key, target]))
    await redis.set(keys.layout(), LAYOUT)
    if moved:
        log.warning("moved %d Redis keys to key layout %d (usage, budgets, batches)", moved, LAYOUT)
    return moved
