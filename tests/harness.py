"""The test harness: real Redis, per-test key namespaces, configs.

The tests use DB 14 of the local Redis unless LLM_BROKER_TEST_REDIS_URL names
another (README, "Two commands"). Every test gets its own Redis key namespace
(config `namespace`), `t-<run>-<test>`, so tests, and test runs, can share a
Redis without seeing each other's streams; the keys are deleted afterwards and
the run's prefix is swept at its end. Broker processes (tests/stacks.py) are
real `llm-broker` subprocesses. tests/conftest.py turns these pieces into fixtures.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypedDict, Unpack

import pytest
import redis
import yaml

from broker.cli.embedded_redis import free_port, start_embedded_redis
from broker.config import hash_key
from broker.store import connection

# The tests' own database on a shared Redis (DB 0 is where a local broker or app most likely keeps its
# data), and a prefix shared by every key of this run, under which each test gets its namespace.
TEST_DB = 14
RUN = uuid.uuid4().hex[:6]
TEST_KEY = "sk-test-key-0001"
REPO = Path(__file__).resolve().parent.parent


def find_redis(env: dict[str, str] | None = None) -> str:
    """$LLM_BROKER_TEST_REDIS_URL, else DB 14 of the local Redis on 6379, else a redis-server we start.

    Broker semantics are proven against real Redis only: with no redis-server
    at all the suite stops with an instruction instead of falling back to fakeredis.
    """
    env = dict(os.environ) if env is None else env
    url = env.get("LLM_BROKER_TEST_REDIS_URL")
    if url:
        return url
    try:
        redis.Redis(host="127.0.0.1", port=6379, db=TEST_DB, socket_connect_timeout=1).ping()
        return f"redis://127.0.0.1:6379/{TEST_DB}"
    except redis.ConnectionError:
        pass
    if not shutil.which("redis-server"):
        raise pytest.UsageError(
            "the tests need a Redis server: none answers on 127.0.0.1:6379 and redis-server is not on PATH "
            "(install it, e.g. `apt-get install redis-server`, or set LLM_BROKER_TEST_REDIS_URL)"
        )
    embedded = start_embedded_redis()
    atexit.register(embedded.stop)
    return embedded.url


REDIS_URL = find_redis()


def share_the_default_ssl_context() -> None:
    """Every httpx client (every httpx.get/post, every openai SDK client) builds an SSL context from the CA
    bundle: ~60 ms of CPU, hundreds of times a run, though every test speaks plain HTTP to 127.0.0.1.
    The clients get one, built the same way, once."""
    for name in ("httpx._transports.default", "httpx2._transports.default"):  # httpx2: the SDK's, if it has one
        try:
            _share_in(importlib.import_module(name))
        except ImportError:
            pass


def _share_in(transports: ModuleType) -> None:
    create = transports.create_ssl_context
    shared = functools.cache(lambda trust_env: create(verify=True, cert=None, trust_env=trust_env))

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is True and cert is None:
            return shared(trust_env)
        return create(verify=verify, cert=cert, trust_env=trust_env)

    transports.create_ssl_context = create_ssl_context  # type: ignore[attr-defined]


# ------------------------------------------------------------------ namespaces and config


def new_namespace() -> str:
    return f"t-{RUN}-{uuid.uuid4().hex[:8]}"


def drop_namespace(ns: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{ns}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


class Sections(TypedDict, total=False):
    """The config's sections besides providers and models; an empty one is left out."""

    server: dict[str, Any]
    tenants: dict[str, Any]  # default: tenant "test" with TEST_KEY
    queue: dict[str, Any]
    redis_url: str  # default: REDIS_URL
    circuit: dict[str, Any]
    usage: dict[str, Any]
    batches: dict[str, Any]  # files_dir defaults to a directory next to the config
    admin: dict[str, Any]
    cache: dict[str, Any]
    redis: dict[str, Any]  # durability (broker/queue/durability.py)


def write_config(path: Path, namespace: str, *, providers: dict[str, Any], models: dict[str, Any],
                 **sections: Unpack[Sections]) -> Path:
    doc: dict[str, Any] = {
        "redis_url": sections.get("redis_url") or REDIS_URL,
        "namespace": namespace,
        "providers": providers,
        "models": models,
        "tenants": sections.get("tenants") or {"test": {"keys": [hash_key(TEST_KEY)]}},
    }
    for name in ("server", "queue", "circuit", "usage", "admin", "cache", "redis"):
        if section := sections.get(name):
            doc[name] = section
    # The door's lag shedding (api/loop_lag.py) off unless a test turns it on (tests/test_door.py): here a
    # dozen processes share two cores, and an API process the scheduler starves lags for the machine's
    # sake, not for load it should refuse.
    doc["server"] = {"shed_lag_ms": 0, **doc.get("server", {})}
    batches = sections.get("batches") or {}
    doc["batches"] = batches if "s3" in batches else {"files_dir": str(path.parent / "files"), **batches}
    path.write_text(yaml.safe_dump(doc))
    return path


def sync_client(url: str) -> redis.Redis | redis.RedisCluster:
    """A blocking client for a test's own checks, on a single Redis or a cluster (broker/store/connection.py)."""
    if connection.is_cluster(url):
        return redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(host, port)
                                                 for host, port in connection.cluster_nodes(url)])
    return redis.Redis.from_url(url)


# ------------------------------------------------------------------ a Redis of a test's own


class RedisServer:
    """A redis-server on a free port in a temp dir, for tests that kill, restart or flush it."""

    def __init__(self, directory: Path, *, persistent: bool = False, replica_of: RedisServer | None = None) -> None:
        self.port = free_port()
        self.directory = directory
        self.persistent = persistent  # AOF, fsync'd on every write: a restart keeps everything
        self.replica_of = replica_of  # a replica of that server (--replicaof), synced before start() returns
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        primary = ["--replicaof", "127.0.0.1", str(self.replica_of.port)] if self.replica_of else []
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *aof, *primary,
             "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after Redis's 5 s default
             "--dir", str(self.directory), "--dbfilename", f"dump-{self.port}.rdb"], stdout=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while True:
            try:
                info = redis.Redis.from_url(self.url).info("replication")
                if not self.replica_of or info.get("master_link_status") == "up":
                    return
            except redis.ConnectionError:
                pass
            assert time.monotonic() < end, f"redis-server on {self.port} did not come up"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


# ------------------------------------------------------------------ reading SSE


def sse_data(body: str) -> list[str]:
    """The data of each event of an SSE body, in order (`id:` lines and comments skipped)."""
    return [line[6:] for event in body.split("\n\n") for line in event.split("\n") if line.startswith("data: ")]


def next_data(lines: Iterator[str]) -> str:
    """The next `data:` line of a stream being read line by line (its `id:` line skipped)."""
    for line in lines:
        if line.startswith("data: "):
            return line
        assert line.startswith(("id: ", ":")) or not line, line
    raise AssertionError("the stream ended without another event")
