"""`llm-broker dead list | replay`: the dead-letter streams (broker/queue/dead_letters.py) for operators."""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec
from redis.exceptions import RedisError

from broker.config import Config
from broker.errors import BrokerError
from broker.keys import Keys
from broker.queue import dead_letters
from broker.queue.streams import QueueScripts
from broker.routing.router import Router
from broker.store.connection import connect


def add_arguments(p: argparse.ArgumentParser, config_help: str) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listed = actions.add_parser("list", help="show the dead-lettered jobs",
                                description="Show each dead-lettered job, oldest first per provider: when it "
                                            "failed, its job id, tenant, model, attempts and last error.")
    replayed = actions.add_parser("replay", help="queue dead-lettered jobs again",
                                  description="Queue dead-lettered jobs again, routed under the current config "
                                              "with a fresh deadline, and drop them from the dead-letter stream. "
                                              "One that cannot be queued stays there.")
    replayed.add_argument("ids", nargs="*", metavar="ID", help="job ids, as `dead list` shows them (or req_<id>)")
    replayed.add_argument("--all", action="store_true", help="every dead-lettered job (of --provider)")
    listed.add_argument("--json", action="store_true", help="one JSON object per job, a line each")
    for sub in (listed, replayed):
        sub.add_argument("--config", help=config_help)
        sub.add_argument("--provider", help="only this provider's dead letters")


def run(config: Config, args: argparse.Namespace) -> int:
    if args.provider is not None and args.provider not in config.providers:
        print(f"llm-broker: unknown provider {args.provider!r}; configured: {sorted(config.providers)}",
              file=sys.stderr)
        return 2
    if args.action == "replay" and bool(args.ids) == args.all:
        print("llm-broker: dead replay takes job ids or --all", file=sys.stderr)
        return 2
    providers = [args.provider] if args.provider else sorted(config.providers)
    try:
        return asyncio.run(_run(config, args, providers))
    except RedisError as exc:  # one line, not a traceback (a replay stopped here left the rest dead)
        print(f"llm-broker: Redis: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _run(config: Config, args: argparse.Namespace, providers: list[str]) -> int:
    redis = connect(config.redis_url)
    keys = Keys(config.namespace)
    try:
        found = await dead_letters.read(redis, keys, providers)
        if args.action == "list":
            _print(found, as_json=args.json)
            return 0
        wanted = {i.removeprefix("req_") for i in args.ids}
        chosen = [f for f in found if args.all or f.letter.job_id in wanted]
        unknown = wanted - {f.letter.job_id for f in chosen}
        for job_id in sorted(unknown):
            print(f"not replayed {job_id}: no such dead-lettered job", file=sys.stderr)
        refused = 0
        scripts, router = QueueScripts(redis), Router(config)
        for dead in chosen:
            try:
                job = await dead_letters.replay(redis, scripts, keys, config, router, dead)
            except BrokerError as exc:
                refused += 1
                print(f"not replayed {dead.letter.job_id}: {exc.message}", file=sys.stderr)
                continue
            print(f"replayed {job.id} on {job.served_by}")
        return 2 if unknown else 1 if refused else 0
    finally:
        await redis.aclose()


def _print(found: list[dead_letters.Found], *, as_json: bool) -> None:
    if as_json:
        for dead in found:
            print(msgspec.json.encode(dead.letter).decode())
        return
    if not found:
        print("no dead-lettered jobs")
        return
    rows = [("provider", "failed at (UTC)", "job", "tenant", "model", "attempts", "last error")]
    for dead in found:
        d = dead.letter
        rows.append((d.provider, d.failed_at.replace("+00:00", ""), d.job_id, d.tenant, d.model, str(d.attempts),
                     f"{d.status} {d.code or ''}: {d.error}".replace(" :", ":")))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[6])
