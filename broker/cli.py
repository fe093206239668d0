"""`llm-broker` command line: the composition root.

This is the one module that wires api/ and workers/ together (imports stay
inside the subcommands, so `broker` itself still depends on neither).

    llm-broker dev      API + one worker per provider + embedded Redis, one process
    llm-broker api      the production HTTP edge (uvicorn; --workers N processes)
    llm-broker worker   a worker process for one provider
    llm-broker hash-key turn an API key into the sha256 form config expects
    llm-broker check-config  validate a config file and exit
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator

from broker import config as config_module
from broker.config import ConfigError

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-broker", description="OpenAI-compatible LLM gateway on Redis")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="YAML config file (default: $LLM_BROKER_CONFIG, else built-in mock setup)")
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        return p

    dev = with_config(sub.add_parser("dev", help="API + workers + embedded Redis in one process"))
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--api-key", default=config_module.DEV_API_KEY, help="key of the built-in dev tenant")

    api = with_config(sub.add_parser("api", help="run the HTTP API (production)"))
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument("--workers", type=int, default=1, help="API processes sharing the port")

    worker = with_config(sub.add_parser("worker", help="run a worker for one provider"))
    worker.add_argument("--provider", required=True, help="provider name from the config")
    worker.add_argument("--concurrency", type=int, help="jobs in flight (default: the provider's concurrency)")
    worker.add_argument("--burst", action="store_true", help="drain the queue, then exit")

    hash_key = sub.add_parser("hash-key", help="print the sha256 form of an API key for the config")
    hash_key.add_argument("key")

    with_config(sub.add_parser("check-config", help="validate the config and exit"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hash-key":
        print(config_module.hash_key(args.key))
        return 0
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_module.resolve(args.config, dev_api_key=getattr(args, "api_key", config_module.DEV_API_KEY))
    except ConfigError as exc:
        print(f"llm-broker: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"config OK: {len(config.providers)} providers, {len(config.models)} models, {len(config.tenants)} tenants")
        return 0
    if args.command == "worker":
        return _run_worker(config, args)
    if args.command == "api":
        return _run_api(args)
    return _run_dev(config, args)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _run_worker(config: config_module.Config, args: argparse.Namespace) -> int:
    from workers.main import serve

    if args.provider not in config.providers:
        print(f"llm-broker: unknown provider {args.provider!r}; configured: {sorted(config.providers)}",
              file=sys.stderr)
        return 2
    _install_uvloop()
    asyncio.run(serve(config, args.provider, concurrency=args.concurrency, burst=args.burst))
    return 0


# httptools, answering unparseable requests in the OpenAI error shape (api/http_protocol.py).
HTTP_PROTOCOL = "api.http_protocol:OpenAIErrorsHTTPProtocol"


def _run_api(args: argparse.Namespace) -> int:
    import uvicorn

    if args.config:
        os.environ["LLM_BROKER_CONFIG"] = os.path.abspath(args.config)  # read by each API process
    uvicorn.run(
        "api.app:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
        loop="uvloop", http=HTTP_PROTOCOL, log_level=args.log_level, access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0


def _run_dev(config: config_module.Config, args: argparse.Namespace) -> int:
    from broker.embedded_redis import start_embedded_redis

    embedded = None
    if args.config or os.environ.get("LLM_BROKER_CONFIG") or os.environ.get("REDIS_URL"):
        redis_note = f"Redis: {config.redis_url} (from config/REDIS_URL)"
    else:
        embedded = start_embedded_redis()
        config = config_module.with_redis_url(config, embedded.url)
        redis_note = f"Redis: embedded {embedded.description}"
    _install_uvloop()
    try:
        asyncio.run(_dev(config, args, redis_note))
    finally:
        if embedded:
            embedded.stop()
    return 0


async def _dev(config: config_module.Config, args: argparse.Namespace, redis_note: str) -> None:
    import uvicorn
    from redis.asyncio import Redis

    from api.app import create_app
    from workers.loop import Worker

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # Ctrl-C ends serve() and returns here, so workers and Redis stop cleanly
            # (uvicorn's own handler would re-raise the signal after shutdown).
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            yield

    redis = Redis.from_url(config.redis_url)
    workers = [Worker(config, name, redis) for name in config.providers]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    server = Server(uvicorn.Config(create_app(config), host=args.host, port=args.port, log_level="warning",
                                   http=HTTP_PROTOCOL,
                                   access_log=False, lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            print(_dev_banner(config, args, redis_note), flush=True)
        await serving
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()
        print("llm-broker dev stopped.", flush=True)


def _dev_banner(config: config_module.Config, args: argparse.Namespace, redis_note: str) -> str:
    base_url = f"http://{args.host}:{args.port}/v1"
    model = next(iter(config.models), "mock-chat")
    return (
        f"llm-broker dev is up\n  base URL: {base_url}\n  API key:  {args.api_key}\n  {redis_note}\n"
        f"  workers:  {', '.join(config.providers)}\n  models:   {', '.join(config.models)}\n\n"
        f"  from openai import OpenAI\n"
        f"  client = OpenAI(base_url=\"{base_url}\", api_key=\"{args.api_key}\")\n"
        f"  r = client.chat.completions.create(model=\"{model}\", messages=[{{\"role\": \"user\", \"content\": \"Hi\"}}])\n"
        f"  print(r.choices[0].message.content)\n\nCtrl-C stops everything."
    )


if __name__ == "__main__":
    sys.exit(main())
