"""What a request costs the box, read from outside the broker: CPU from /proc, Redis commands and
memory from INFO.

CPU is utime+stime from /proc/<pid>/stat, summed over each broker process and its live descendants
(plus what their reaped children left in cutime+cstime), and over the redis-server process. Redis
commands are the INFO commandstats `calls` summed over every command, which counts the commands a
Lua script runs too; `info` itself is left out, as only the benchmark calls it (nothing in api/,
broker/ or workers/ does). Both need a Redis of the benchmark's own: on a shared one the counts
would carry other users' work, so they are None there.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import redis

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces; everything after its closing paren splits cleanly.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def _tree(pid: int) -> list[int]:
    """`pid` and its live descendants, found by their parent pid (this kernel has no
    /proc/<pid>/task/<tid>/children)."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                kids.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                continue  # gone while we looked
    tree, todo = [], [pid]
    while todo:
        tree.append(p := todo.pop())
        todo += kids.get(p, [])
    return tree


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and every process under it (0 once it is gone)."""
    total = 0.0
    for p in _tree(pid):
        try:  # after the name: state is [0], ppid [1], utime [11], stime [12], cutime [13], cstime [14]
            total += sum(int(f) for f in _stat(p)[11:15]) * _TICK_S
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


class Snapshot(msgspec.Struct):
    broker_cpu_s: float
    redis_cpu_s: float | None
    redis_commands: int | None


class Cost(msgspec.Struct, kw_only=True):
    requests: int
    broker_cpu_ms: float  # per request: API + worker processes and their children
    redis_cpu_ms: float | None  # per request
    commands: float | None  # Redis commands per request

    @property
    def cpu_ms(self) -> float | None:
        return None if self.redis_cpu_ms is None else self.broker_cpu_ms + self.redis_cpu_ms

    def summary(self) -> str:
        if self.cpu_ms is None or self.commands is None:
            return f"CPU {self.broker_cpu_ms:.3f} ms/req API+worker (Redis: n/a, shared Redis)"
        return (f"CPU {self.cpu_ms:.3f} ms/req (API+worker {self.broker_cpu_ms:.3f}, Redis "
                f"{self.redis_cpu_ms:.3f}), {self.commands:.1f} Redis commands/req")


class Probe:
    """Snapshots of the broker's processes (`pids`) and, on the benchmark's own Redis, of Redis."""

    def __init__(self, pids: list[int], redis_client: redis.Redis | None) -> None:
        self.pids = pids
        self.redis = redis_client
        self.redis_pid = int(redis_client.info("server")["process_id"]) if redis_client is not None else None
        self.costs: dict[str, Cost] = {}

    def snap(self) -> Snapshot:
        broker = sum(tree_cpu_s(pid) for pid in self.pids)
        if self.redis is None or self.redis_pid is None:
            return Snapshot(broker, None, None)
        stats: dict[str, dict[str, int]] = self.redis.info("commandstats")  # type: ignore[assignment]
        commands = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
        return Snapshot(broker, tree_cpu_s(self.redis_pid), commands)

    def record(self, label: str, before: Snapshot, requests: int) -> Cost:
        after = self.snap()
        n = max(requests, 1)
        redis_cpu = commands = None
        if before.redis_cpu_s is not None and after.redis_cpu_s is not None:
            redis_cpu = (after.redis_cpu_s - before.redis_cpu_s) * 1000 / n
        if before.redis_commands is not None and after.redis_commands is not None:
            commands = (after.redis_commands - before.redis_commands) / n
        cost = Cost(requests=requests, broker_cpu_ms=(after.broker_cpu_s - before.broker_cpu_s) * 1000 / n,
                    redis_cpu_ms=redis_cpu, commands=commands)
        self.costs[label] = cost
        return cost
