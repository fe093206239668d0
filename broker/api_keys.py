"""API keys made at run time (`llm-broker keys`, /admin/keys), stored in Redis beside the config's.

Only a key's sha256 is stored, as in config; the key itself is shown once, in the answer that
creates it. Names are unique across every tenant and the config's keys, so `keys revoke NAME`
means one key. A run-time key's limits and budgets are an ApiKey's, with the same bounds, and are
enforced exactly like a config key's (api/auth.py `Principal.key`).

Keys owned (broker/keys.py): `api_keys` (hash: sha256 hex → KeyRecord), `api_key_names` (hash:
name → sha256 hex), `api_keys_version` (a counter every change bumps) and the `api_keys_changed`
channel, on which each change publishes the new version. API processes keep every key in memory
(api/live_keys.py) and reload when the version moves, so authenticating costs no round trip.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from typing import Annotated

import msgspec
from redis.asyncio import Redis

from broker.config import ApiKey, Budgets, Config
from broker.errors import InvalidRequest, ModelNotFound
from broker.keys import Keys
from broker.store.scripts import lua_script

log = logging.getLogger(__name__)

_CREATE = lua_script("apikey_create")
_REVOKE = lua_script("apikey_revoke")
# The version and the records in one atomic read (both in the `{apikeys}` slot).
LOAD = "return {redis.call('GET', KEYS[1]) or '0', redis.call('HGETALL', KEYS[2])}"

ID_DIGITS = 12  # a key's id: the first hex digits of its hash, as a bare config key is named
MIN_PREFIX = 8  # shortest hash prefix `revoke` takes: shorter ones match keys by accident
KEY_PREFIX = "sk-"
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # as config's ApiKey.name: it becomes part of Redis keys


class NewKey(Budgets, kw_only=True):
    """What makes a key: the POST /admin/keys body and `keys create`'s flags, limits bounded as config's.

    Strict, unlike OpenAI request bodies: a misspelt `rmp` must be a 400, not an unlimited key.
    """

    tenant: str
    name: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)] | None = None


class KeyRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A stored key (msgpack). Not Strict: API processes of an older version must still read
    records that a newer one wrote with more fields."""

    name: str
    tenant: str
    created_at: int  # unix s
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    daily_budget_usd: float | None = None
    monthly_budget_usd: float | None = None

    def limits(self, digest: str) -> ApiKey | None:
        """Its own limits and budgets as config's ApiKey (None if it has none: its tenant's alone apply)."""
        key = ApiKey(key="sha256:" + digest, name=self.name, rpm=self.rpm, tpm=self.tpm,
                     max_concurrent=self.max_concurrent, daily_budget_usd=self.daily_budget_usd,
                     monthly_budget_usd=self.monthly_budget_usd)
        return key if key.bounded() else None


class KeyInfo(msgspec.Struct, kw_only=True):
    """A key as `keys list` and /admin/keys show it: never the key, except `key` in the answer that made it."""

    object: str
    id: str
    name: str
    tenant: str
    source: str  # "redis" (made at run time: revocable) or "config"
    created_at: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    daily_budget_usd: float | None = None
    monthly_budget_usd: float | None = None
    key: str | msgspec.UnsetType = msgspec.UNSET  # left out of the JSON unless set


_encode = msgspec.msgpack.Encoder().encode
_decode_record = msgspec.msgpack.Decoder(KeyRecord).decode


def _info(digest: str, record: KeyRecord | ApiKey, tenant: str,
          *, key: str | msgspec.UnsetType = msgspec.UNSET) -> KeyInfo:
    return KeyInfo(object="api_key", id=digest[:ID_DIGITS], name=record.name, tenant=tenant,
                   source="redis" if isinstance(record, KeyRecord) else "config",
                   created_at=record.created_at if isinstance(record, KeyRecord) else None,
                   rpm=record.rpm, tpm=record.tpm, max_concurrent=record.max_concurrent,
                   daily_budget_usd=record.daily_budget_usd, monthly_budget_usd=record.monthly_budget_usd, key=key)


def _config_keys(config: Config, tenant: str | None = None) -> list[tuple[str, ApiKey]]:
    return [(name, key) for name, t in config.tenants.items() if tenant in (None, name) for key in t.api_keys()]


async def load(redis: Redis, keys: Keys) -> tuple[int, dict[str, KeyRecord]]:
    """The version and every stored key by sha256 hex, read together (one script: a MULTI is not
    there under Redis Cluster), so a change made meanwhile has a newer version and is seen by the
    next reload."""
    version, flat = await redis.register_script(LOAD)(keys=[keys.api_keys_version(), keys.api_keys()])
    raw = dict(zip(flat[::2], flat[1::2]))
    records = {}
    for digest, blob in raw.items():
        try:
            records[digest.decode()] = _decode_record(blob)
        except msgspec.DecodeError:  # never written by us: skip it rather than lock every key out
            log.warning("undecodable API key record %s… skipped", digest[:ID_DIGITS].decode(errors="replace"))
    return int(version or 0), records


async def version(redis: Redis, keys: Keys) -> int:
    return int(await redis.get(keys.api_keys_version()) or 0)


async def create(redis: Redis, keys: Keys, config: Config, spec: NewKey) -> KeyInfo:
    """Make and store a key for `spec`; the answer is the only place the key ever appears."""
    if spec.tenant not in config.tenants:
        raise InvalidRequest(f"Unknown tenant {spec.tenant!r}; configured: {', '.join(sorted(config.tenants))}.",
                             param="tenant", code="unknown_tenant")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    name = spec.name or digest[:ID_DIGITS]
    if any(key.name == name for _, key in _config_keys(config)):
        raise _name_taken(name)
    record = KeyRecord(name=name, tenant=spec.tenant, created_at=int(time.time()), rpm=spec.rpm, tpm=spec.tpm,
                       max_concurrent=spec.max_concurrent, daily_budget_usd=spec.daily_budget_usd,
                       monthly_budget_usd=spec.monthly_budget_usd)
    stored = await redis.register_script(_CREATE)(
        keys=[keys.api_keys(), keys.api_key_names(), keys.api_keys_version()],
        args=[digest, name, _encode(record), keys.api_keys_changed()])
    if int(stored) != 1:
        raise _name_taken(name)
    return _info(digest, record, spec.tenant, key=secret)


def _name_taken(name: str) -> InvalidRequest:
    return InvalidRequest(f"A key named {name!r} exists already; key names are unique.", param="name", status=409,
                          code="key_name_taken")


async def listing(redis: Redis, keys: Keys, config: Config, tenant: str | None = None) -> list[KeyInfo]:
    """The config's keys, then the stored ones oldest first: names, ids and limits, never a key."""
    _, records = await load(redis, keys)
    found = [_info(key.key.removeprefix("sha256:"), key, name) for name, key in _config_keys(config, tenant)]
    stored = sorted(records.items(), key=lambda item: (item[1].created_at, item[1].name))
    return found + [_info(digest, r, r.tenant) for digest, r in stored if tenant in (None, r.tenant)]


async def revoke(redis: Redis, keys: Keys, config: Config, ref: str) -> KeyInfo:
    """Revoke the stored key named `ref`, or whose hash starts with `ref` (at least MIN_PREFIX hex digits)."""
    _, records = await load(redis, keys)
    matches = [(d, r) for d, r in records.items() if r.name == ref]
    if not matches and len(ref) >= MIN_PREFIX and all(c in "0123456789abcdef" for c in ref):
        matches = [(d, r) for d, r in records.items() if d.startswith(ref)]
    if len(matches) > 1:
        raise InvalidRequest(f"{ref!r} starts the hash of {len(matches)} keys; give more of it, or the key's name.",
                             param="id", code="ambiguous_key")
    if not matches:
        if any(ref == key.name or (len(ref) >= MIN_PREFIX and key.key.startswith("sha256:" + ref))
               for _, key in _config_keys(config)):
            raise InvalidRequest(f"Key {ref!r} is in the config file: remove it there.", param="id", status=409,
                                 code="key_in_config")
        raise ModelNotFound(f"No API key named {ref!r} or whose id starts with it.", param="id", code="key_not_found")
    digest, record = matches[0]
    removed = await redis.register_script(_REVOKE)(
        keys=[keys.api_keys(), keys.api_key_names(), keys.api_keys_version()],
        args=[digest, record.name, keys.api_keys_changed()])
    if int(removed) != 1:  # revoked meanwhile by someone else
        raise ModelNotFound(f"API key {ref!r} was revoked already.", param="id", code="key_not_found")
    return _info(digest, record, record.tenant)


async def limits_of(redis: Redis, keys: Keys, config: Config, tenant: str, name: str | None) -> ApiKey | None:
    """A key's own limits by its name, for work that outlives its request (batches): its config
    entry's, else its stored record's (None once it is revoked: its tenant's limits still apply)."""
    in_config = config.tenants[tenant].api_key(name) if tenant in config.tenants else None
    if in_config is not None or name is None:
        return in_config
    digest = await redis.hget(keys.api_key_names(), name)  # type: ignore[misc]
    blob = await redis.hget(keys.api_keys(), digest) if digest is not None else None  # type: ignore[misc]
    return _decode_record(blob).limits(digest.decode()) if blob is not None else None
