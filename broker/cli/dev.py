"""`llm-broker dev`: the API and one worker per provider in one process, on an embedded Redis
unless a config or $REDIS_URL names one. It leaves nothing behind: the embedded Redis and the
Batch API's files (unless the config names `batches.files_dir`) live in a temp dir removed at exit.

Shutdown order matters: the API stops accepting and lets open streams finish, the
workers drain what they hold, and only then does the embedded Redis stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator

from broker import config as config_module
from broker.config import Config, hash_key
from broker.store.connection import connect


def run(config: Config, args: argparse.Namespace, sock: socket.socket) -> int:
    """Serve on the already-bound `sock` until Ctrl-C; the exit status."""
    from broker.cli.embedded_redis import start_embedded_redis
    from broker.store.connection import without_password

    # What this run keeps on disk and the config did not place (the embedded Redis's working dir,
    # the Batch API's file bodies) goes in one temp dir, removed at exit: the directory dev was
    # started from is left as it was.
    scratch = tempfile.mkdtemp(prefix="llm-broker-dev-")
    embedded = None
    try:
        if args.config or os.environ.get("LLM_BROKER_CONFIG") or os.environ.get("REDIS_URL"):
            redis_note = f"Redis: {without_password(config.redis_url)} (from config/REDIS_URL)"
        else:
            embedded = start_embedded_redis(workdir=os.path.join(scratch, "redis"))
            config = config_module.with_redis_url(config, embedded.url)
            redis_note = f"Redis: embedded {embedded.description}"
        temporary_files = config.batches.files_dir is None
        if temporary_files:
            config = config_module.with_files_dir(config, os.path.join(scratch, "files"))
        return asyncio.run(_serve(config, args, sock, redis_note, temporary_files))
    finally:
        if embedded:
            embedded.stop()
        shutil.rmtree(scratch, ignore_errors=True)


async def _serve(config: Config, args: argparse.Namespace, sock: socket.socket, redis_note: str,
                 temporary_files: bool) -> int:
    import uvicorn

    from api.app import create_app
    from api.http_protocol import OpenAIErrorsHTTPProtocol
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

    async def serve() -> int:
        # uvicorn ends a failed start-up with sys.exit(3); in a task that would surface as
        # "Task exception was never retrieved" after uvicorn has already logged the cause.
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        return 0

    from broker.batches import worker as batch_worker

    redis = connect(config.redis_url)
    workers = [Worker(config, name, redis) for name in config.providers]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    batches = asyncio.create_task(batch_worker.run(config))  # the Batch API's batches
    server = Server(uvicorn.Config(create_app(config), log_level="warning", access_log=False, lifespan="on",
                                   http=OpenAIErrorsHTTPProtocol, backlog=config.server.listen_backlog,
                                   timeout_keep_alive=config.server.keep_alive_s))
    serving = asyncio.create_task(serve())
    try:
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            print(banner(config, args, redis_note, temporary_files=temporary_files), flush=True)
        return await serving
    finally:
        for w in workers:
            w.stop()
        batches.cancel()
        await asyncio.gather(*tasks, batches, return_exceptions=True)
        await redis.aclose()
        print("llm-broker dev stopped.", flush=True)


def banner(config: Config, args: argparse.Namespace, redis_note: str, *, temporary_files: bool = False) -> str:
    base_url = f"http://{args.host}:{args.port}/v1"
    model = next(iter(config.models), "mock-chat")
    key = args.api_key or config_module.DEV_API_KEY
    # Show a key only if it really opens the door: with a config, keys are stored as hashes.
    if any(k.key == hash_key(key) for t in config.tenants.values() for k in t.api_keys()):
        auth, snippet_key = f"API key:  {key}", key
    elif config.tenants:
        auth = f"tenants:  {', '.join(config.tenants)} (authenticate with a key whose hash the config lists)"
        snippet_key = "<your key>"
    else:
        auth, snippet_key = "tenants:  none configured: every request gets 401", "<no key works>"
    return (
        f"llm-broker dev is up\n  base URL: {base_url}\n  {auth}\n  {redis_note}\n"
        f"  files:    {config.batches.store_dir}{' (removed at exit)' if temporary_files else ''}\n"
        f"  workers:  {', '.join(config.providers)}\n  models:   {', '.join(config.models)}\n\n"
        f"  from openai import OpenAI\n"
        f"  client = OpenAI(base_url=\"{base_url}\", api_key=\"{snippet_key}\")\n"
        f"  r = client.chat.completions.create(model=\"{model}\", messages=[{{\"role\": \"user\", \"content\": \"Hi\"}}])\n"
        f"  print(r.choices[0].message.content)\n\nCtrl-C stops everything."
    )
