"""An embedded Redis for `llm-broker dev` on a machine with no Redis configured.

Preference order: a real `redis-server` from PATH (in a temp dir, on a free
port, nothing persisted), else fakeredis's in-process TCP server, which speaks
enough of the protocol (streams, consumer groups, pub/sub) for development.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

import redis


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedRedis:
    url: str
    description: str
    _stop: Callable[[], None]

    def stop(self) -> None:
        self._stop()


def start_embedded_redis(*, prefer_real: bool = True, workdir: str | None = None) -> EmbeddedRedis:
    """A redis-server working in `workdir` (made, and removed by `stop`; default: a temp dir), else fakeredis."""
    executable = shutil.which("redis-server") if prefer_real else None
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    if executable:
        directory = workdir or tempfile.mkdtemp(prefix="llm-broker-redis-")
        os.makedirs(directory, exist_ok=True)
        proc = subprocess.Popen(
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # Out of our process group: Ctrl-C in a terminal signals the whole group, and Redis
            # must outlive the API and workers while they drain. stop() ends it, last.
            start_new_session=True, preexec_fn=_exit_with_parent(),
        )

        def stop_real() -> None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
            shutil.rmtree(directory, ignore_errors=True)

        _wait_for_ping(url, stop_real)
        return EmbeddedRedis(url, f"redis-server {executable} (temp dir {directory}, port {port})", stop_real)

    server = _fake_server(port)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
    thread.start()

    def stop_fake() -> None:
        server.shutdown()
        server.server_close()

    _wait_for_ping(url, stop_fake)
    return EmbeddedRedis(url, f"in-process fakeredis (port {port}; no redis-server on PATH)", stop_fake)


def _exit_with_parent() -> Callable[[], None] | None:
    """Linux: a redis-server in its own session no longer dies with our process group, so have
    the kernel send it SIGTERM if we die without stopping it (kill -9, a crash)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


def _fake_server(port: int) -> socketserver.ThreadingTCPServer:
    from fakeredis import TcpFakeServer

    class BurstTcpFakeServer(TcpFakeServer):
        # socketserver listens with a backlog of 5, and the API's pool opens up to 64
        # connections at once: the kernel resets the overflow, and those requests got a 503.
        request_queue_size = socket.SOMAXCONN

    return BurstTcpFakeServer(("127.0.0.1", port), server_type="redis")


def _wait_for_ping(url: str, on_failure: Callable[[], None], timeout_s: float = 10.0) -> None:
    client = redis.Redis.from_url(url)
    end = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > end:
                    on_failure()
                    raise RuntimeError(f"embedded Redis did not start on {url}") from None
                time.sleep(0.05)
    finally:
        client.close()
