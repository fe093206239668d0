"""Config of the exact-match response cache (broker/cache/exact.py): the top-level `cache:` section, and a
model's own `cache:` in its mapping form. No section, no cache: the request path then does no cache work."""

from __future__ import annotations

from typing import Annotated

import msgspec

from broker.config.types import Strict

# A day-long cap on one entry's life keeps a stale answer from outliving a model update for long;
# 30 days is the most anyone asked of an exact-match cache.
TtlS = Annotated[int, msgspec.Meta(ge=1, le=30 * 86_400)]


class CacheSettings(Strict):
    """The cache's bounds, and the defaults of every model (a model's `cache:` overrides them).

    Redis memory is at most `max_entries` x (`max_entry_bytes` + ~200 bytes of key and index).
    """

    ttl_s: TtlS = 3600
    max_entries: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] = 10_000
    # Larger answers are served but not stored: a few huge ones would crowd out the rest.
    max_entry_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    # Only requests whose answer is meant to repeat (`temperature: 0`, or a `seed`) are cached;
    # false caches sampled answers too (every identical request then gets the first one).
    deterministic_only: bool = True
    # Scope: false keeps each tenant's answers to itself; true shares them across tenants.
    shared: bool = False


class ModelCache(Strict):
    """One model's exceptions to the top-level `cache:` section."""

    enabled: bool = True
    shared: bool | None = None
    ttl_s: TtlS | None = None
    deterministic_only: bool | None = None
