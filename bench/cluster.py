"""A Redis Cluster of `masters` redis-servers of the benchmark's own, for bench.capacity's validation."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from broker.cli.embedded_redis import free_port


def cmd(client: redis.Redis, *args: object) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


class Cluster:
    """`masters` redis-servers of its own in cluster mode, the 16,384 slots split evenly among them by
    CLUSTER ADDSLOTSRANGE (`redis-cli --cluster create`, which tests/test_cluster.py uses, refuses fewer
    than three masters), joined by CLUSTER MEET. No replicas, nothing persisted."""

    SLOTS = 16384

    def __init__(self, directory: Path, masters: int) -> None:
        self.ports = [self._port() for _ in range(masters)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for port in self.ports:
            (directory / str(port)).mkdir()
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no",
                 "--dir", str(directory / str(port))], stdout=subprocess.DEVNULL, start_new_session=True))
        self.clients = [redis.Redis(port=p, socket_timeout=10) for p in self.ports]
        self._until(lambda: all(c.ping() for c in self.clients))
        for i, client in enumerate(self.clients):
            lo, hi = self.range(i)
            cmd(client, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for port in self.ports[1:]:
            cmd(self.clients[0], "CLUSTER", "MEET", "127.0.0.1", port)
        self._until(lambda: all(cmd(c, "CLUSTER INFO")["cluster_state"] == "ok"
                                and int(cmd(c, "CLUSTER INFO")["cluster_known_nodes"]) == masters
                                for c in self.clients))
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def range(self, i: int) -> tuple[int, int]:
        per = self.SLOTS // len(self.ports)
        return i * per, (self.SLOTS - 1 if i == len(self.ports) - 1 else (i + 1) * per - 1)

    def node_of(self, key: str) -> int:
        slot = key_slot(key.encode())  # the client's own CRC16 and hash-tag rule
        return next(i for i in range(len(self.ports)) if self.range(i)[0] <= slot <= self.range(i)[1])

    @staticmethod
    def _port() -> int:
        """A free port whose cluster bus port (10000 above it) is free too."""
        while True:
            port = free_port()
            if port + 10000 < 65536:
                with socket.socket() as bus:
                    try:
                        bus.bind(("127.0.0.1", port + 10000))
                    except OSError:
                        continue
                return port

    @staticmethod
    def _until(check: Callable[[], Any], timeout_s: float = 30.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            try:
                if check():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the cluster did not come up")

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
