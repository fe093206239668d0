"""Shared fixtures: real Redis, broker processes on real ports, per-test key namespaces.

The tests use DB 14 of the local Redis unless LLM_BROKER_TEST_REDIS_URL names
another (README, "Two commands"). Every test gets its own Redis key namespace
(config `namespace`), `t-<run>-<test>`, so tests, and test runs, can share a
Redis without seeing each other's streams; the keys are deleted afterwards and
the run's prefix is swept at its end. Broker processes are real `llm-broker`
subprocesses.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml

from broker.cli.embedded_redis import free_port, start_embedded_redis
from broker.config import hash_key
from broker.keys import Keys
from broker.store import connection

# The tests' own database on a shared Redis (DB 0 is where a local broker or app most likely keeps its
# data), and a prefix shared by every key of this run, under which each test gets its namespace.
TEST_DB = 14
RUN = uuid.uuid4().hex[:6]


def _find_redis(env: dict[str, str] | None = None) -> str:
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


REDIS_URL = _find_redis()


def _share_the_default_ssl_context(transports: Any) -> None:
    """Every httpx client (every httpx.get/post, every openai SDK client) builds an SSL context from the CA
    bundle: ~60 ms of CPU, hundreds of times a run, though every test speaks plain HTTP to 127.0.0.1.
    The clients get one, built the same way, once."""
    create = transports.create_ssl_context
    shared = functools.cache(lambda trust_env: create(verify=True, cert=None, trust_env=trust_env))

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is True and cert is None:
            return shared(trust_env)
        return create(verify=verify, cert=cert, trust_env=trust_env)

    transports.create_ssl_context = create_ssl_context


for _transports in ("httpx._transports.default", "httpx2._transports.default"):  # httpx2: the SDK's, if it has one
    try:
        _share_the_default_ssl_context(importlib.import_module(_transports))
    except ImportError:
        pass

TEST_KEY = "sk-test-key-0001"
REPO = Path(__file__).resolve().parent.parent


def _drop_namespace(ns: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{ns}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def new_namespace() -> str:
    return f"t-{RUN}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session", autouse=True)
def _sweep_run() -> Iterator[None]:
    """At the end, whatever this run left (a key written after its test's cleanup, by a process being stopped)."""
    yield
    _drop_namespace(f"t-{RUN}-*")


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = new_namespace()
    yield ns
    _drop_namespace(ns)


@pytest.fixture(scope="module")
def module_namespace() -> Iterator[str]:
    ns = new_namespace()
    yield ns
    _drop_namespace(ns)


def write_config(path: Path, namespace: str, *, providers: dict[str, Any], models: dict[str, Any],
                 server: dict[str, Any] | None = None, tenants: dict[str, Any] | None = None,
                 queue: dict[str, Any] | None = None, redis_url: str = REDIS_URL,
                 circuit: dict[str, Any] | None = None, usage: dict[str, Any] | None = None,
                 batches: dict[str, Any] | None = None, admin: dict[str, Any] | None = None,
                 cache: dict[str, Any] | None = None) -> Path:
    doc: dict[str, Any] = {
        "redis_url": redis_url,
        "namespace": namespace,
        "providers": providers,
        "models": models,
        "tenants": tenants or {"test": {"keys": [hash_key(TEST_KEY)]}},
    }
    if server:
        doc["server"] = server
    if queue:
        doc["queue"] = queue
    if circuit:
        doc["circuit"] = circuit
    if usage:
        doc["usage"] = usage
    if admin:
        doc["admin"] = admin
    if cache:
        doc["cache"] = cache
    doc["batches"] = {"files_dir": str(path.parent / "files"), **(batches or {})}
    path.write_text(yaml.safe_dump(doc))
    return path


def sync_client(url: str) -> Any:
    """A blocking client for a test's own checks, on a single Redis or a cluster (broker/store/connection.py)."""
    if connection.is_cluster(url):
        return redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(host, port)
                                                 for host, port in connection.cluster_nodes(url)])
    return redis.Redis.from_url(url)


class Proc:
    """A broker subprocess whose output is kept in a file for post-mortems."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self._terminated = False
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})},
        )

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash)."""
        self.popen.kill()
        self.popen.wait()

    def terminate(self) -> None:
        """SIGTERM, once: a second one would tell the API (uvicorn) to stop without draining."""
        if self.popen.poll() is None and not self._terminated:
            self.popen.terminate()
            self._terminated = True

    def stop(self, timeout: float = 15) -> int:
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def wait_for_http(url: str, proc: Proc, timeout_s: float = 20) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"process exited early:\n{proc.output()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up:\n{proc.output()}")


class Stack:
    """API and worker processes sharing one config (and so one Redis namespace)."""

    def __init__(self, config_path: Path, log_dir: Path) -> None:
        self.config_path = config_path
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        self.base_url = ""  # the API server started last by api(), first by up()
        self.base_urls: list[str] = []  # every API server's, in the order they were started

    def api(self, workers: int = 1) -> str:
        proc, self.base_url = self._spawn_api(workers)
        wait_for_http(f"{self.base_url}/models", proc)
        return self.base_url

    def worker(self, provider: str, *extra: str, wait: bool = True) -> Proc:
        """A worker process; by default returns once it is registered as live (the API admits jobs then)."""
        live = self._live_workers([provider])
        proc = self._spawn_worker(provider, *extra)
        if wait:
            live.wait([proc])
        else:
            live.client.close()
        return proc

    def up(self, *workers: str | tuple[str, ...], apis: tuple[int, ...] = (1,)) -> str:
        """Worker processes (a provider, or a provider and its flags) and API servers (one per entry of
        `apis`, with that many processes), started at once so that their start-ups overlap. Returns the
        first API's base URL (all are in `base_urls`) once every API answers and every worker is registered
        as live: the state `worker()`s then `api()`s leave, a second or more sooner."""
        specs = [(w,) if isinstance(w, str) else w for w in workers]
        live = self._live_workers([spec[0] for spec in specs])
        procs = [self._spawn_worker(*spec) for spec in specs]
        servers = [self._spawn_api(processes) for processes in apis]
        for server, url in servers:
            wait_for_http(f"{url}/models", server)
        live.wait(procs)
        self.base_url = servers[0][1]
        return self.base_url

    @property
    def workers(self) -> list[Proc]:
        """The worker processes, in the order they were started."""
        return [proc for proc in self.procs if proc.args[0] == "worker"]

    def _spawn_api(self, workers: int) -> tuple[Proc, str]:
        url = ""
        while not url or url in self.base_urls:  # two servers started at once must not draw the same port
            url = f"http://127.0.0.1:{free_port()}/v1"
        port = url.rsplit(":", 1)[1].removesuffix("/v1")
        proc = Proc(["api", "--config", str(self.config_path), "--host", "127.0.0.1", "--port", port,
                     "--workers", str(workers), "--log-level", "warning"],
                    self.log_dir / f"api-{port}.log")
        self.procs.append(proc)
        self.base_urls.append(url)
        return proc, url

    def _spawn_worker(self, provider: str, *extra: str) -> Proc:
        proc = Proc(["worker", "--config", str(self.config_path), "--provider", provider, *extra],
                    self.log_dir / f"worker-{provider}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def _live_workers(self, providers: list[str]) -> _LiveWorkers:
        config = yaml.safe_load(self.config_path.read_text())
        return _LiveWorkers(config["redis_url"], Keys(config["namespace"]), providers)

    def batch_worker(self) -> Proc:
        """A batch worker (arq) process."""
        proc = Proc(["batch-worker", "--config", str(self.config_path), "--log-level", "warning"],
                    self.log_dir / f"batch-worker-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:  # every process drains at once, rather than one after another
            proc.terminate()
        for proc in self.procs:
            proc.stop()


class _LiveWorkers:
    """The live workers of some providers before new ones start (a provider listed once per new worker),
    to wait until every new one has registered."""

    def __init__(self, redis_url: str, keys: Keys, providers: list[str]) -> None:
        self.client = sync_client(redis_url)
        self.keys = keys
        self.want = {p: self.count(p) + providers.count(p) for p in providers}

    def count(self, provider: str) -> int:
        return int(self.client.zcard(self.keys.workers(provider)))

    def wait(self, procs: list[Proc]) -> None:
        end = time.monotonic() + 20
        try:
            while any(self.count(p) < n for p, n in self.want.items()):
                for proc in procs:
                    if proc.popen.poll() is not None or time.monotonic() > end:
                        raise RuntimeError(f"worker did not register:\n{proc.output()}")
                time.sleep(0.05)
        finally:
            self.client.close()


def _stacks(directory: Path, namespace: str) -> Iterator[Any]:
    stacks: list[Stack] = []

    def make(providers: dict[str, Any], models: dict[str, Any], **kw: Any) -> Stack:
        path = write_config(directory / f"config-{len(stacks)}.yaml", namespace,
                            providers=providers, models=models, **kw)
        stack = Stack(path, directory)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture
def stack_factory(tmp_path: Path, namespace: str) -> Iterator[Any]:
    yield from _stacks(tmp_path, namespace)


@pytest.fixture(scope="module")
def module_stack_factory(tmp_path_factory: pytest.TempPathFactory, module_namespace: str) -> Iterator[Any]:
    yield from _stacks(tmp_path_factory.mktemp("stack"), module_namespace)


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    """The official SDK against the module's `base_url` fixture (its own broker stack)."""
    return openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)


# ------------------------------------------------------------------ a Redis of a test's own

class RedisServer:
    """A redis-server on a free port in a temp dir, for tests that kill, restart or flush it."""

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.port = free_port()
        self.directory = directory
        self.persistent = persistent  # AOF, fsync'd on every write: a restart keeps everything
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *aof,
             "--dir", str(self.directory)], stdout=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < end
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, persistent=True)
    server.start()
    yield server
    server.kill()


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
