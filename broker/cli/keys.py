"""`llm-broker keys create|list|revoke`: API keys stored in Redis (broker/api_keys.py).

`create` prints the new key alone on stdout (its details go to stderr), so
`KEY=$(llm-broker keys create --tenant acme)` captures it; it is never shown again.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from broker import api_keys
from broker.config import Config
from broker.errors import BrokerError
from broker.keys import Keys
from broker.store.connection import connect

T = TypeVar("T")

CONFIG_HELP = "YAML config file; required unless $LLM_BROKER_CONFIG names one"
# Flag → NewKey field: the same names and bounds as a key's limits in config.
_LIMIT_FLAGS = {"--rpm": "rpm", "--tpm": "tpm", "--max-concurrent": "max_concurrent",
                "--daily-budget": "daily_budget_usd", "--monthly-budget": "monthly_budget_usd"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="make a key for a tenant and print it (once)",
                            description="Make a key for a tenant, print it once, and store only its sha256. "
                                        "It works on every API process within 2 seconds.")
    create.add_argument("--tenant", required=True, help="a tenant from the config")
    create.add_argument("--name", help="unique name (in usage and rate-limit errors; default: its id)")
    for flag, field in _LIMIT_FLAGS.items():
        create.add_argument(flag, dest=field, type=float if "budget" in flag else int,
                            help=("USD" if "budget" in flag else "limit") + " of its own, on top of its tenant's")
    listed = sub.add_parser("list", help="list keys (names, ids, limits; never the keys)",
                            description="List the config's keys and those made at run time.")
    listed.add_argument("--tenant", help="only this tenant's keys")
    revoke = sub.add_parser("revoke", help="revoke a key made at run time",
                            description="Revoke a key made with `keys create` or POST /admin/keys; it stops "
                                        "working on every API process within 2 seconds.")
    revoke.add_argument("ref", metavar="NAME|ID", help="the key's name, or its id (at least "
                                                       f"{api_keys.MIN_PREFIX} hex digits of its hash)")
    for action in (create, listed, revoke):
        action.add_argument("--config", help=CONFIG_HELP)
        action.add_argument("--json", action="store_true", help="JSON output")


def run(config: Config, args: argparse.Namespace) -> int:
    keys = Keys(config.namespace)
    try:
        if args.keys_command == "create":
            spec = _spec(args)
            made = _with_redis(config, lambda redis: api_keys.create(redis, keys, config, spec))
            _print(made, args.json, lambda: print(made.key))
            print(f"key {made.name!r} (id {made.id}) of tenant {made.tenant!r}: shown only now, store it safely",
                  file=sys.stderr)
        elif args.keys_command == "list":
            if args.tenant is not None and args.tenant not in config.tenants:
                raise _unknown_tenant(args.tenant, config)
            found = _with_redis(config, lambda redis: api_keys.listing(redis, keys, config, args.tenant))
            _print(found, args.json, lambda: _table(found))
        else:
            gone = _with_redis(config, lambda redis: api_keys.revoke(redis, keys, config, args.ref))
            _print(gone, args.json,
                   lambda: print(f"revoked key {gone.name!r} (id {gone.id}) of tenant {gone.tenant!r}"))
    except (BrokerError, _BadFlag) as exc:
        print(f"llm-broker: {exc}", file=sys.stderr)
        return 2
    except (RedisError, OSError) as exc:
        print(f"llm-broker: cannot reach Redis at the config's redis_url: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


class _BadFlag(Exception):
    pass


def _unknown_tenant(tenant: str, config: Config) -> _BadFlag:
    return _BadFlag(f"unknown tenant {tenant!r}; configured: {sorted(config.tenants)}")


def _spec(args: argparse.Namespace) -> api_keys.NewKey:
    """The flags as a NewKey, checked against the bounds config puts on a key's limits."""
    given = {field: getattr(args, field) for field in _LIMIT_FLAGS.values() if getattr(args, field) is not None}
    try:
        return msgspec.convert({"tenant": args.tenant, "name": args.name, **given}, api_keys.NewKey)
    except msgspec.ValidationError as exc:
        text, _, path = str(exc).partition(" - at `$.")
        flag = next((f for f, field in _LIMIT_FLAGS.items() if path.rstrip("`") == field), "--" + path.rstrip("`"))
        raise _BadFlag(f"invalid {flag}: {text}") from None


def _with_redis(config: Config, work: Callable[[Redis], Awaitable[T]]) -> T:
    async def go() -> T:
        redis = connect(config.redis_url, socket_connect_timeout=5)
        try:
            return await work(redis)
        finally:
            await redis.aclose()
    return asyncio.run(go())


def _print(found: Any, as_json: bool, plain: Callable[[], None]) -> None:
    if as_json:
        for item in found if isinstance(found, list) else [found]:
            print(msgspec.json.encode(item).decode())
    else:
        plain()


def _table(found: list[api_keys.KeyInfo]) -> None:
    if not found:
        print("no keys")
        return
    rows = [("tenant", "name", "id", "source", "created", "limits")]
    for k in found:
        limits = [f"{label}={value:g}" for label, value in (
            ("rpm", k.rpm), ("tpm", k.tpm), ("max_concurrent", k.max_concurrent),
            ("daily_usd", k.daily_budget_usd), ("monthly_usd", k.monthly_budget_usd)) if value is not None]
        created = _when(k.created_at) if k.created_at else "-"
        rows.append((k.tenant, k.name, k.id, k.source, created, " ".join(limits) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[5])


def _when(unix_s: int) -> str:
    return dt.datetime.fromtimestamp(unix_s, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
