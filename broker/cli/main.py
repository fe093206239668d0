"""`llm-broker` command line: the composition root.

This is the one module that wires api/ and workers/ together (imports stay
inside the subcommands, so `broker` itself still depends on neither).

    llm-broker dev      API + one worker per provider + embedded Redis, one process
    llm-broker api      the production HTTP edge (uvicorn; --workers N processes)
    llm-broker worker   a worker process for one provider
    llm-broker hash-key turn an API key (argument or stdin) into the sha256 form config expects
    llm-broker check-config  validate a config file and exit
    llm-broker usage    a tenant's usage and spend from the ledger
    llm-broker dead     list or replay dead-lettered jobs
    llm-broker batch-worker  run Batch API batches (arq)
    llm-broker batches  list batches and their progress
    llm-broker status   providers, workers, queues, circuits, spend today; `queues` the detail
    llm-broker keys     create, list and revoke API keys kept in Redis
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import importlib.metadata
import os
import socket
import sys
from collections.abc import Sized
from pathlib import Path

from broker import config as config_module
from broker.cli import batches as batches_cli
from broker.cli import dead as dead_cli
from broker.cli import keys as keys_cli
from broker.cli import status as status_cli
from broker.cli import usage as usage_cli
from broker.config import ConfigError
from broker.money.pricing import PriceBook
from broker.ops import log_context

REQUIRED_CONFIG_HELP = "YAML config file; required unless $LLM_BROKER_CONFIG names one"


def _version() -> str:
    try:
        return importlib.metadata.version("llm-broker")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-broker", description="OpenAI-compatible LLM gateway on Redis")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description)

    def served(p: argparse.ArgumentParser, host: str, config_help: str) -> None:
        p.add_argument("--config", help=config_help)
        p.add_argument("--host", default=host, help="address to listen on (default: %(default)s)")
        p.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
        logged(p)

    def logged(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="(default: %(default)s)")
        p.add_argument("--log-format", default="text", choices=log_context.FORMATS,
                       help="text lines, or one JSON object per line (default: %(default)s)")

    dev = command("dev", "API + workers + embedded Redis in one process, for development",
                  "Run the API and one worker per provider in one process. With no config it serves the "
                  "built-in mock models to the key sk-dev, on a Redis of its own (redis-server from PATH, "
                  "else in-process fakeredis) unless $REDIS_URL names one. Ctrl-C stops everything.")
    served(dev, "127.0.0.1", "YAML config file (default: $LLM_BROKER_CONFIG, else the built-in mock setup)")
    dev.add_argument("--api-key", help="key of the built-in dev tenant, without --config (default: sk-dev)")

    api = command("api", "run the HTTP API (production)",
                  "Run the OpenAI-compatible HTTP API. It queues requests in Redis for `llm-broker worker` "
                  "processes; it needs a config, from --config or $LLM_BROKER_CONFIG.")
    served(api, "0.0.0.0", REQUIRED_CONFIG_HELP)
    api.add_argument("--workers", type=int, default=1, help="API processes sharing the port (default: %(default)s)")

    worker = command("worker", "run a worker for one provider",
                     "Pull jobs for one provider from Redis and call its upstream; SIGTERM stops pulling "
                     "and lets held jobs finish. Needs a config, from --config or $LLM_BROKER_CONFIG.")
    worker.add_argument("--config", help=REQUIRED_CONFIG_HELP)
    worker.add_argument("--provider", required=True, help="provider name from the config")
    worker.add_argument("--concurrency", type=int, help="jobs in flight (default: the provider's concurrency)")
    worker.add_argument("--burst", action="store_true", help="drain the queue, then exit")
    worker.add_argument("--health-file", type=Path, metavar="PATH",
                        help="touch PATH after every heartbeat that reached Redis; its age is the worker's health "
                             "(container healthchecks)")
    worker.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics at http://0.0.0.0:PORT/metrics")
    logged(worker)

    hash_key = command("hash-key", "print the sha256 form of an API key for the config",
                       "Print the form an API key takes in a tenant's `keys`: the config never holds keys in clear. "
                       "Without KEY it reads the key from stdin (one line; a terminal does not echo it), which "
                       "keeps it out of shell history and `ps`.")
    hash_key.add_argument("key", nargs="?",
                          help="the API key clients will send as `Authorization: Bearer KEY` (default: read stdin)")

    check = command("check-config", "validate a config file and exit",
                    "Decode and check a config file as `api` and `worker` would; exit 0 if valid, "
                    "else 2 with the file and field at fault.")
    check.add_argument("--config", help=REQUIRED_CONFIG_HELP)

    usage = command("usage", "print a tenant's usage and spend",
                    "Read the usage ledger in Redis: requests, tokens and cost per UTC day, model, key or "
                    "deployment (the figures GET /v1/usage gives the tenant's own keys).")
    usage.add_argument("--config", help=REQUIRED_CONFIG_HELP)
    usage_cli.add_arguments(usage)

    batch_worker = command("batch-worker", "run the Batch API's batches (arq worker)",
                           "Run batches created with POST /v1/batches: expand their input files into jobs, "
                           "collect the results into output files. Any number may run; SIGTERM stops it "
                           "and another resumes its batches.")
    batch_worker.add_argument("--config", help=REQUIRED_CONFIG_HELP)
    logged(batch_worker)

    status = command("status", "one screen: providers, workers, queues, circuits, spend today",
                     "Providers and their live workers, jobs waiting and running per lane, open circuits "
                     "and each tenant's spend today, read from Redis.")
    status.add_argument("--config", help=REQUIRED_CONFIG_HELP)
    status_cli.add_arguments(status)

    queues = command("queues", "every stream with work: length, pending, oldest job",
                     "Each provider's lane streams that hold jobs, per tenant: entries, entries being run "
                     "(pending) and the age of the oldest.")
    queues.add_argument("--config", help=REQUIRED_CONFIG_HELP)
    status_cli.add_arguments(queues)

    listed = command("batches", "list batches and their progress",
                     "List the batches of every tenant (or one) with their status and progress.")
    listed.add_argument("--config", help=REQUIRED_CONFIG_HELP)
    batches_cli.add_arguments(listed)

    dead = command("dead", "list or replay dead-lettered jobs",
                   "Jobs that failed through no fault of their request (every attempt failed upstream, or the "
                   "workers running them died) wait in a dead-letter stream per provider for "
                   "queue.dead_letter_retention_s: `dead list` shows them, `dead replay` queues them again.")
    dead_cli.add_arguments(dead, REQUIRED_CONFIG_HELP)
    keys_cli.add_arguments(command("keys", "create, list and revoke API keys kept in Redis",
                                   "API keys made at run time, beside the config's (broker/api_keys.py)."))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hash-key":
        return _hash_key(args.key)
    has_config = bool(args.config or os.environ.get("LLM_BROKER_CONFIG"))
    if args.command != "dev" and not has_config:
        # A production command must never fall back to the dev tenant and its well-known key.
        return _usage_error(f"{args.command} needs a config: pass --config FILE or set $LLM_BROKER_CONFIG "
                            "(`llm-broker dev` runs the built-in mock setup)")
    if args.command == "dev" and args.api_key and has_config:
        return _usage_error("--api-key sets the key of the built-in dev tenant; with a config, keys come "
                            "from its tenants (`llm-broker hash-key` makes one)")
    try:
        config = config_module.resolve(args.config, dev_api_key=getattr(args, "api_key", None)
                                       or config_module.DEV_API_KEY)
    except ConfigError as exc:
        print(f"llm-broker: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"config OK: {_count(config.providers, 'provider')}, {_count(config.models, 'model')}, "
              f"{_count(config.tenants, 'tenant')}")
        for deployment in PriceBook(config).unpriced():
            print(f"warning: {deployment} has no known price: its cost is reported as unpriced, not as 0 "
                  "(set input_per_mtok and output_per_mtok on it)", file=sys.stderr)
        return 0
    if args.command == "usage":
        return usage_cli.run(config, args)
    if args.command == "batches":
        return batches_cli.run(config, args)
    if args.command == "status":
        return status_cli.run_status(config, args)
    if args.command == "queues":
        return status_cli.run_queues(config, args)
    if args.command == "keys":
        return keys_cli.run(config, args)
    if args.command == "dead":
        return dead_cli.run(config, args)
    log_context.configure(args.log_level, args.log_format)
    if args.command == "worker":
        return _run_worker(config, args)
    if args.command == "batch-worker":
        return _run_batch_worker(config)
    sock = _listen(args.host, args.port)
    if sock is None:
        return 1
    if args.command == "api":
        sock.close()  # uvicorn binds again (each of --workers processes needs it); we only checked it is free
        return _run_api(args, config)
    from broker.cli import dev

    _install_uvloop()
    return dev.run(config, args, sock)


def _usage_error(message: str) -> int:
    print(f"llm-broker: {message}", file=sys.stderr)
    return 2


def _hash_key(given: str | None) -> int:
    if given is None:
        if sys.stdin.isatty():
            given = getpass.getpass("API key (not echoed): ")
        else:
            # `echo KEY |` and a file end with a newline that is no part of the key.
            given = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not given or "\n" in given or "\r" in given:
        return _usage_error("hash-key needs one key: an argument, or a single line on stdin")
    print(config_module.hash_key(given))
    return 0


def _count(items: Sized, noun: str) -> str:
    n = len(items)
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _listen(host: str, port: int) -> socket.socket | None:
    """Bind the port up front: a busy port is one clear line, not uvicorn's start-up traceback."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "busy"
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "the port is in use (pick another with --port)" if exc.errno == errno.EADDRINUSE else exc.strerror
        print(f"llm-broker: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        return None
    return sock


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
    if args.metrics_port is not None:
        import prometheus_client

        prometheus_client.start_http_server(args.metrics_port)  # a thread of its own: no event loop work
    _install_uvloop()
    asyncio.run(serve(config, args.provider, concurrency=args.concurrency, burst=args.burst,
                      health_file=args.health_file))
    return 0


def _run_batch_worker(config: config_module.Config) -> int:
    import signal

    from broker.batches import worker as batch_worker

    if batch_worker.queue_missing(config):
        return _usage_error(batch_worker.NO_QUEUE_ON_CLUSTER)

    async def serve() -> None:
        task = asyncio.ensure_future(batch_worker.run(config))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # a step cut short is resumed by the next
            loop.add_signal_handler(sig, task.cancel)
        await task

    _install_uvloop()
    asyncio.run(serve())
    return 0


# SIGTERM on the API: open requests and streams get this long to finish (deploy/kubernetes's grace period is longer).
API_DRAIN_S = 30

# httptools, answering unparseable requests in the OpenAI error shape (api/http_protocol.py).
HTTP_PROTOCOL = "api.http_protocol:OpenAIErrorsHTTPProtocol"


def _run_api(args: argparse.Namespace, config: config_module.Config) -> int:
    import uvicorn

    if args.config:
        os.environ["LLM_BROKER_CONFIG"] = os.path.abspath(args.config)  # read by each API process
    os.environ[log_context.LEVEL_ENV] = args.log_level  # each of --workers N processes configures its logging
    os.environ[log_context.FORMAT_ENV] = args.log_format
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # /metrics adds up every API process's counts (prometheus-client's multiprocess mode): they
        # share a fresh directory, set before any of them imports prometheus_client.
        import atexit
        import shutil
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared = tempfile.mkdtemp(prefix="llm-broker-metrics-")
        atexit.register(shutil.rmtree, shared, ignore_errors=True)
    uvicorn.run(
        "api.app:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
        loop="uvloop", http=HTTP_PROTOCOL, log_level=args.log_level, access_log=False,
        timeout_graceful_shutdown=API_DRAIN_S, backlog=config.server.listen_backlog,
        timeout_keep_alive=config.server.keep_alive_s,  # outlasts clients' idle expiry (config/model.py)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
