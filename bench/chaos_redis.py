"""The chaos soak's Redis: a primary and a replica under three Sentinels (Debian's redis-server and
redis-sentinel), each a process of its own on a free port, so the soak can SIGKILL the primary, watch
Sentinel promote the replica, and bring the old primary back as a replica of the new one.

Each node runs on a `Host` (bench/hosts.py): all on this machine, or primary and replica on two hosts
apart so that killing the primary is one host's Redis going away. Every node binds its host's address
and announces it (`replica-announce-ip`, `sentinel announce-ip`): what Sentinel hands the broker is
the address other hosts reach, never a loopback one. Every node and Sentinel asks for a password
(`requirepass`; `masterauth`, `sentinel auth-pass`): Redis's protected mode refuses a password-less
server's clients from any address but loopback, as a deployment across hosts would meet it.

As tests/test_sentinel.py sets them up, with a quorum of 2 of 3 (a real deployment's), 1 s to call a
primary down (`down-after-milliseconds`) and no persistence: what a failover loses is what had not
reached the replica yet (README, "What a Sentinel failover can lose").
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time

import redis

from bench.hosts import Host
from broker.cli.embedded_redis import free_port

SERVICE = "mymaster"
# No 5 s wait for more replicas before a full sync (Redis 7's default): a returning node syncs at once.
DATA = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]


class RedisNode:
    def __init__(self, host: Host, name: str, port: int, password: str, *args: str) -> None:
        self.host, self.port, self.args, self.password = host, port, args, password
        self.directory = host.role_dir(name)
        self.address = f"{host.ip}:{port}"
        self.proc = self._spawn(*args)
        self.client = redis.Redis(host=host.ip, port=port, password=password, socket_timeout=2, decode_responses=True)
        _wait(self.answers, f"redis on {self.address} did not start")

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        sentinel = "--sentinel" in args
        data = [] if sentinel else ["--replica-announce-ip", self.host.ip, "--masterauth", self.password]
        return subprocess.Popen(self.host.cmd(["redis-server", *args, "--port", str(self.port), "--bind", self.host.ip,
                                               "--requirepass", self.password, *data, "--dir", str(self.directory)]),
                                stdout=open(self.directory / "log", "ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)

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
        _wait(self.answers, f"redis on {self.address} did not come back")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SentinelRedis:
    """Primary + replica + 3 sentinels, each on its host. `url` is the broker's `redis+sentinel://` URL."""

    def __init__(self, nodes: tuple[Host, Host], sentinels: tuple[Host, Host, Host]) -> None:
        for tool in ("redis-server", "redis-sentinel"):
            if not shutil.which(tool):
                raise SystemExit(f"the chaos soak needs {tool} (Debian: apt-get install redis-server redis-sentinel)")
        self.password = password = secrets.token_hex(16)
        primary = RedisNode(nodes[0], "redis-a", free_port(), password, *DATA)
        replica = RedisNode(nodes[1], "redis-b", free_port(), password, *DATA, "--replicaof", primary.host.ip,
                            str(primary.port))
        self.nodes = {primary.address: primary, replica.address: replica}
        self.sentinels: list[RedisNode] = []
        for i, host in enumerate(sentinels):
            conf = host.role_dir(f"sentinel-{i}") / "sentinel.conf"  # Sentinel rewrites its config: one each
            port = free_port()
            conf.write_text(f"sentinel monitor {SERVICE} {primary.host.ip} {primary.port} 2\n"
                            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                            f"sentinel failover-timeout {SERVICE} 5000\n"
                            f"sentinel parallel-syncs {SERVICE} 1\n"
                            f"sentinel auth-pass {SERVICE} {password}\n"
                            f"sentinel announce-ip {host.ip}\n"
                            f"sentinel announce-port {port}\n")
            # A Sentinel's requirepass is also what it gives the other Sentinels (Redis 6.2+, sentinel.conf).
            self.sentinels.append(RedisNode(host, f"sentinel-{i}", port, password, str(conf), "--sentinel"))
        self.url = (f"redis+sentinel://:{password}@{','.join(s.address for s in self.sentinels)}/{SERVICE}/0"
                    f"?sentinel_password={password}")
        _wait(lambda: self._replica_seen(replica), "the sentinels never saw the replica in sync", 30)

    def _replica_seen(self, replica: RedisNode) -> bool:
        try:
            seen = all(s.client.execute_command("SENTINEL", "REPLICAS", SERVICE) for s in self.sentinels)
            return seen and replica.client.info("replication")["master_link_status"] == "up"
        except redis.RedisError:
            return False

    def primary_address(self) -> str:
        for sentinel in self.sentinels:
            try:
                host, port = sentinel.client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                return f"{host}:{port}"
            except (redis.RedisError, TypeError, ValueError):
                continue
        raise RuntimeError("no sentinel answers")

    def primary(self) -> redis.Redis:
        """A client of the primary as the sentinels see it now (for the soak's own reads)."""
        host, port = self.primary_address().rsplit(":", 1)
        return redis.Redis(host=host, port=int(port), password=self.password, socket_timeout=5)

    def fail_over(self) -> tuple[float, int]:
        """SIGKILL the primary; wait for Sentinel to promote the replica; bring the old primary back as a
        replica of the new one. Returns (seconds until the promotion, writes the replica had not got)."""
        old = self.nodes[self.primary_address()]
        new = next(node for address, node in self.nodes.items() if address != old.address)
        try:
            behind = int(old.client.info("replication")["master_repl_offset"]) - \
                int(new.client.info("replication")["slave_repl_offset"])
        except (redis.RedisError, KeyError):
            behind = -1
        old.kill()
        killed = time.monotonic()
        _wait(lambda: self.primary_address() == new.address, "Sentinel never promoted the replica", 60)
        promoted_s = time.monotonic() - killed
        old.restart(*DATA, "--replicaof", new.host.ip, str(new.port))
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
