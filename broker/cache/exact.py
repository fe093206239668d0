"""The exact-match response cache, with single-flight: which requests it serves, and its Redis steps.

A request is cached under the sha256 of its normalized form: endpoint, public model, the route its
rules chose, and every field that shapes the answer. Fields that only say how it is delivered or
who asked (`stream`, `stream_options`, `user`, `metadata`, `store`, `safety_identifier`,
`prompt_cache_key`) are left out, so a streamed request and a plain one share an entry. Dict keys
are sorted before hashing: the same tool schema written in another order is the same request.

    lookup   cache_lookup.lua: the entry (hit), or lead / follow / run alone, in one step
    store    cache_store.lua: entry with its TTL, index trimmed to max_entries, flight landed
    land     cache_land.lua: a leader that has nothing to store lets its followers go
    poll     a follower's look: is the flight still up, is the entry there

An entry is the answer's non-streaming JSON body, whatever way it was asked: a streamed answer is
assembled into one (broker/cache/replay.py), and replayed as SSE for a streamed hit.
"""

from __future__ import annotations

import hashlib
import time
from typing import Literal, NamedTuple

import msgspec
from msgspec import UNSET
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from broker.config import Config
from broker.config.cache import CacheSettings
from broker.keys import Keys
from broker.queue.jobs import Job
from broker.queue.payloads import AnyRequest, MediaRequest
from broker.store.scripts import lua_script
from broker.queue.payloads import AnyRequest
from broker.wire import ChatRequest, CompletionRequest, EmbeddingRequest

# Part of every digest: bump it when the entry's form changes, and old entries are simply missed.
FORMAT = 1
SHARED = "*"  # the scope of a model shared across tenants (no tenant name holds a `*`)

# Sorted dict keys: a digest must not depend on the order a client wrote an object's fields in.
_digest_encoder = msgspec.msgpack.Encoder(order="deterministic")


class Policy(NamedTuple):
    """How one public model is cached (the top-level section, with the model's exceptions)."""

    shared: bool
    ttl_s: int
    deterministic_only: bool


class Slot(NamedTuple):
    """Where one request's answer lives, and the key of its single flight."""

    entry: str
    flight: str


Outcome = Literal["hit", "lead", "follow", "alone"]


class Lookup(NamedTuple):
    outcome: Outcome
    entry: bytes | None = None


def normalized(payload: AnyRequest) -> object:
    """The request without the fields that do not change its answer."""
    if isinstance(payload, MediaRequest):
        return payload  # never cached (broker/queue/payloads.py): a new image or transcript each time
    if isinstance(payload, ChatRequest):
        return msgspec.structs.replace(payload, stream=False, stream_options=UNSET, user=UNSET, metadata=UNSET,
                                       store=UNSET, safety_identifier=UNSET, prompt_cache_key=UNSET)
    if isinstance(payload, CompletionRequest):
        return msgspec.structs.replace(payload, stream=False, stream_options=UNSET, user=UNSET)
    if isinstance(payload, EmbeddingRequest):
        return msgspec.structs.replace(payload, user=UNSET)
    return payload  # a rerank: every field changes its answer


def deterministic(payload: AnyRequest) -> bool:
    """Meant to give the same answer again: `temperature: 0` or a `seed` (embeddings and reranks always are;
    media never)."""
    if isinstance(payload, MediaRequest):
        return False
    if not isinstance(payload, ChatRequest | CompletionRequest):
        return True
    return payload.temperature == 0 or isinstance(payload.seed, int)


class ResponseCache:
    """The cache of one process: its policies per model, resolved once, and its scripts."""

    def __init__(self, redis: Redis, keys: Keys, config: Config, settings: CacheSettings) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self._default = Policy(settings.shared, settings.ttl_s, settings.deterministic_only)
        self._policies: dict[str, Policy | None] = {}
        for name in config.models:
            group = config.group(name)
            own = group.cache if group is not None else None
            if own is None:
                self._policies[name] = self._default
            elif own.enabled:
                self._policies[name] = Policy(
                    settings.shared if own.shared is None else own.shared, own.ttl_s or settings.ttl_s,
                    settings.deterministic_only if own.deterministic_only is None else own.deterministic_only)
            else:
                self._policies[name] = None
        self._lookup = redis.register_script(lua_script("cache_lookup"))
        self._store = redis.register_script(lua_script("cache_store"))
        self._land = redis.register_script(lua_script("cache_land"))

    def named(self) -> dict[str, AsyncScript]:
        return {"cache_lookup": self._lookup, "cache_store": self._store, "cache_land": self._land}

    async def load(self) -> None:
        for script in self.named().values():
            await script.registered_client.script_load(script.script)

    def policy(self, model: str) -> Policy | None:
        """None: the model is not cached. A `provider/model` passthrough name gets the defaults."""
        return self._policies.get(model, self._default)

    def slot(self, policy: Policy, job: Job) -> Slot:
        digest = hashlib.sha256(_digest_encoder.encode((FORMAT, job.payload.kind, job.model, job.route,
                                                        normalized(job.request)))).hexdigest()
        scope = SHARED if policy.shared else job.tenant
        return Slot(self.keys.cache_entry(scope, digest), self.keys.cache_flight(scope, digest))

    async def lookup(self, slot: Slot, *, lead: bool, job: Job) -> Lookup:
        flight_ms = max(1, int((job.deadline - time.time()) * 1000))
        found = await self._lookup(keys=[slot.entry, slot.flight], args=[int(lead), job.id, flight_ms])
        outcome = found[0].decode()
        assert outcome in ("hit", "lead", "follow", "alone"), outcome
        return Lookup(outcome, found[1] if outcome == "hit" else None)

    async def store(self, slot: Slot, body: bytes, policy: Policy, leader: str) -> None:
        await self._store(keys=[slot.entry, self.keys.cache_index(), slot.flight],
                          args=[body, policy.ttl_s * 1000, int(time.time() * 1000), self.settings.max_entries, leader])

    async def land(self, slot: Slot, leader: str) -> None:
        await self._land(keys=[slot.flight], args=[leader])

    async def poll(self, slot: Slot) -> tuple[bool, bytes | None]:
        """(flight still up, entry): the flight is read first, see cache_store.lua."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(slot.flight)
            pipe.get(slot.entry)
            flying, entry = await pipe.execute()
        return bool(flying), entry
