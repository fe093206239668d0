"""Hosts for the benchmarks' processes: this machine as one host, or network namespaces as many.

A `Host` is where a process runs: the address others reach it at, the command prefix that puts a
process there, and a directory of its own. `Host.local` is this machine as it is (127.0.0.1, no
prefix). `Network` makes hosts apart: one network namespace per host (`ip netns`), each with its own
`lo` and an `eth0` that is one end of a veth pair whose other end is on a bridge in the root
namespace, on a private /24 (10.231.X.0/24, X the first one no interface here already uses). The
bridge holds X.1, so a process in the root namespace (the soak's load) reaches every host; hosts
reach each other only by their 10.231.X.Y addresses: a process that dials 127.0.0.1 meets its own
namespace's `lo`, where nothing of the others listens.

    with Network(["redis-1", "api-1"], tmp) as net:
        net.hosts["api-1"].cmd([sys.executable, "-m", ...])   # ["ip", "netns", "exec", NAME, ...]

`ip netns exec` runs the command with execvp after setns(2) (iproute2's ip/ipnetns.c), so the
process's pid is the command's: SIGKILL, SIGSTOP and /proc/PID reads work as on one host.

Names carry the creating process's pid (`lb<pid>-<host>`, bridge `lbr<pid>`), so `Network` first
removes what a run that died without its cleanup left (its pid gone), and two runs never collide.
Cleanup (on exit, on an exception, on SIGINT/SIGTERM as the caller turns them into exceptions):
SIGKILL every process still in each namespace (`ip netns pids`), delete the namespaces (which
deletes their veth ends, and so the pairs) and the bridge.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

PREFIX = "lb"  # namespaces lb<pid>-<host>, bridge lbr<pid>, veths lv<pid>x<i> (IFNAMSIZ: 15 characters)
SUBNET = "10.231"


@dataclass(frozen=True)
class Host:
    name: str
    ip: str
    prefix: tuple[str, ...]  # what runs a command on this host
    directory: Path  # this host's own files; no other host reads them

    @classmethod
    def local(cls, directory: Path) -> Host:
        return cls("local", "127.0.0.1", (), directory)

    def cmd(self, args: list[str]) -> list[str]:
        return [*self.prefix, *args]

    def role_dir(self, role: str) -> Path:
        path = self.directory / role
        path.mkdir(parents=True, exist_ok=True)
        return path


class NotRoot(SystemExit):
    pass


def require_root() -> None:
    """Network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN: say so rather than fail half-way."""
    if os.geteuid() != 0:
        raise NotRoot("hosts apart needs root (it creates network namespaces, veth pairs and a bridge "
                      "with `ip`); run it as root, or without --hosts-apart")
    if shutil.which("ip") is None:
        raise NotRoot("hosts apart needs iproute2's `ip` (Debian: apt-get install iproute2)")


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespaces() -> list[str]:
    """This machine's named network namespaces (`ip netns list`: "NAME" or "NAME (id: N)")."""
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def ours() -> list[str]:
    """Namespaces made by a Network (any run's)."""
    return [name for name in namespaces() if re.fullmatch(rf"{PREFIX}\d+-.+", name)]


def sweep_stale() -> None:
    """Remove what runs that died without cleaning up left: their namespaces and bridges."""
    for name in ours():
        pid = int(name[len(PREFIX):].split("-", 1)[0])
        if not _alive(pid):
            _drop_namespace(name)
    for line in _ip("-o", "link", "show", "type", "bridge").splitlines():
        match = re.match(rf"\d+: ({PREFIX}r(\d+))[:@]", line)
        if match and not _alive(int(match.group(2))):
            _ip("link", "del", match.group(1), check=False)


def _drop_namespace(name: str) -> None:
    for pid in _ip("netns", "pids", name, check=False).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", name, check=False)


def _free_subnet() -> str:
    used = set(re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)\.", _ip("-o", "-4", "addr")))
    for third in range(256):
        if str(third) not in used:
            return f"{SUBNET}.{third}"
    raise RuntimeError(f"no free {SUBNET}.X.0/24 on this machine")


@dataclass
class Network:
    """Hosts apart: a namespace per name, all on one bridge. A context manager: leaves nothing behind."""

    names: list[str]
    directory: Path
    hosts: dict[str, Host] = field(default_factory=dict)
    bridge: str = ""
    gateway: str = ""  # the bridge's address: the root namespace as the hosts see it

    def __enter__(self) -> Network:
        require_root()
        sweep_stale()
        pid = os.getpid()
        self.bridge = f"{PREFIX}r{pid}"
        try:
            subnet = _free_subnet()
            self.gateway = f"{subnet}.1"
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, name in enumerate(self.names):
                netns, outer, inner = f"{PREFIX}{pid}-{name}", f"lv{pid}x{i}", f"lp{pid}x{i}"
                _ip("netns", "add", netns)
                _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                _ip("link", "set", inner, "netns", netns)
                _ip("link", "set", outer, "master", self.bridge)
                _ip("link", "set", outer, "up")
                address = f"{subnet}.{10 + i}"
                _ip("-n", netns, "link", "set", inner, "name", "eth0")
                _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("-n", netns, "link", "set", "eth0", "up")
                _ip("-n", netns, "link", "set", "lo", "up")
                directory = self.directory / name
                directory.mkdir(parents=True, exist_ok=True)
                self.hosts[name] = Host(name, address, ("ip", "netns", "exec", netns), directory)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def netns(self, host: str) -> str:
        return self.hosts[host].prefix[-1]

    def close(self) -> None:
        pid = os.getpid()
        for name in self.names:
            _drop_namespace(f"{PREFIX}{pid}-{name}")
        if self.bridge:
            _ip("link", "del", self.bridge, check=False)
        self.hosts.clear()

    def left(self) -> list[str]:
        """What of this network is still here (nothing, after close)."""
        pid = os.getpid()
        found = [n for n in namespaces() if n.startswith(f"{PREFIX}{pid}-")]
        if self.bridge and _ip("link", "show", self.bridge, check=False):
            found.append(self.bridge)
        return found
