"""Broker processes for tests: `llm-broker api` and `worker` subprocesses on real ports, grouped in
Stacks that share one config (tests/harness.py writes it) and so one Redis namespace."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, Unpack

import httpx
import yaml

from broker.cli.embedded_redis import free_port
from broker.keys import Keys
from tests.harness import REPO, Sections, sync_client, write_config


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


class StackFactory(Protocol):
    """A Stack from a config's providers, models and other sections; stopped when its fixture ends."""

    def __call__(self, providers: dict[str, Any], models: dict[str, Any], **sections: Unpack[Sections]) -> Stack: ...


@contextlib.contextmanager
def stacks(directory: Path, namespace: str) -> Iterator[StackFactory]:
    """Stacks with their configs and logs in `directory`, all in `namespace`; stopped at the end."""
    made: list[Stack] = []

    def make(providers: dict[str, Any], models: dict[str, Any], **sections: Unpack[Sections]) -> Stack:
        path = write_config(directory / f"config-{len(made)}.yaml", namespace,
                            providers=providers, models=models, **sections)
        made.append(Stack(path, directory))
        return made[-1]

    try:
        yield make
    finally:
        for stack in made:
            stack.stop()
