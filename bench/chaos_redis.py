"""The chaos soak's Redis: a primary and a replica under three Sentinels (Debian's redis-server and
redis-sentinel), each a process of its own on a free port, so the soak can SIGKILL the primary, watch
Sentinel promote the replica, and bring the old primary back as a replica of the new one.

As tests/test_sentinel.py sets them up, with a quorum of 2 of 3 (a real deployment's), 1 s to call a
primary down (`down-after-milliseconds`) and no persistence: what a failover loses is what had not
reached the replica yet (README, "What a Sentinel failover can lose").
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from broker.cli.embedded_redis import free_port

SERVICE = "mymaster"
# No 5 s wait for more replicas before a full sync (Redis 7's default): a returning node syncs at once.
DATA = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]


class RedisNode:
    def __init__(self, directory: Path, port: int, *args: str) -> None:
        self.directory, self.port, self.args = directory, port, args
        directory.mkdir(parents=True, exist_ok=True)
        self.proc = self._spawn(*args)
        self.client = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
        _wait(self.answers, f"redis on {port} did not start")

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["redis-server", *args, "--port", str(self.port), "--bind", "127.0.0.1",
                                 "--dir", str(self.directory)], stdout=open(self.directory / "log", "ab"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    def answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def restart(self, *args: str) -> None:
        self.proc = self._spawn(*args)
        _wait(self.answers, f"redis on {self.port} did not come back")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SentinelRedis:
    """Primary + replica + 3 sentinels. `url` is the broker's `redis+sentinel://` URL."""

    def __init__(self, directory: Path) -> None:
        for tool in ("redis-server", "redis-sentinel"):
            if not shutil.which(tool):
                raise SystemExit(f"the chaos soak needs {tool} (Debian: apt-get install redis-server redis-sentinel)")
        self.nodes = {}
        primary = RedisNode(directory / "a", free_port(), *DATA)
        replica = RedisNode(directory / "b", free_port(), *DATA, "--replicaof", "127.0.0.1", str(primary.port))
        self.nodes = {primary.port: primary, replica.port: replica}
        self.sentinels: list[RedisNode] = []
        for i in range(3):
            conf = directory / f"sentinel-{i}" / "sentinel.conf"  # Sentinel rewrites its config: one each
            conf.parent.mkdir(parents=True)
            conf.write_text(f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
                            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                            f"sentinel failover-timeout {SERVICE} 5000\n"
                            f"sentinel parallel-syncs {SERVICE} 1\n")
            self.sentinels.append(RedisNode(conf.parent, free_port(), str(conf), "--sentinel"))
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{SERVICE}/0"
        _wait(lambda: self._replica_seen(replica), "the sentinels never saw the replica in sync", 30)

    def _replica_seen(self, replica: RedisNode) -> bool:
        try:
            seen = all(s.client.execute_command("SENTINEL", "REPLICAS", SERVICE) for s in self.sentinels)
            return seen and replica.client.info("replication")["master_link_status"] == "up"
        except redis.RedisError:
            return False

    def primary_port(self) -> int:
        for sentinel in self.sentinels:
            try:
                return int(sentinel.client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1])
            except (redis.RedisError, TypeError):
                continue
        raise RuntimeError("no sentinel answers")

    def primary(self) -> redis.Redis:
        """A client of the primary as the sentinels see it now (for the soak's own reads)."""
        return redis.Redis(port=self.primary_port(), socket_timeout=5)

    def fail_over(self) -> tuple[float, int]:
        """SIGKILL the primary; wait for Sentinel to promote the replica; bring the old primary back as a
        replica of the new one. Returns (seconds until the promotion, writes the replica had not got)."""
        old = self.nodes[self.primary_port()]
        new = next(node for port, node in self.nodes.items() if port != old.port)
        try:
            behind = int(old.client.info("replication")["master_repl_offset"]) - \
                int(new.client.info("replication")["slave_repl_offset"])
        except (redis.RedisError, KeyError):
            behind = -1
        old.kill()
        killed = time.monotonic()
        _wait(lambda: self.primary_port() == new.port, "Sentinel never promoted the replica", 60)
        promoted_s = time.monotonic() - killed
        old.restart(*DATA, "--replicaof", "127.0.0.1", str(new.port))
        return promoted_s, behind

    def stop(self) -> None:
        for node in (*self.sentinels, *self.nodes.values()):
            node.stop()


def _wait(condition: object, message: str, timeout_s: float = 15) -> None:
    end = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > end:
            raise RuntimeError(message)
        time.sleep(0.1)
