"""The benchmarks' processes: each started in a session of its own (so stopping it stops its
children too), from this checkout, logging to a file."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent


def start(args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO,
          append: bool = False) -> subprocess.Popen[bytes]:
    # An llm-broker installed from another checkout must not be what runs: `python -m` from cwd=REPO
    # already finds this one first; PYTHONPATH says so to anything those processes start too. Not for a
    # tool run elsewhere (LiteLLM, cwd=tmp), whose imports are its own venv's.
    extra = {}
    if cwd == REPO:
        extra["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.Popen(args, stdout=open(log, "ab" if append else "wb"), stderr=subprocess.STDOUT, cwd=cwd,
                            env={**os.environ, **extra, **(env or {})}, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float, headers: dict[str, str] | None = None) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def drop_namespace(r: redis.Redis, namespace: str) -> None:
    """A bench's namespace is its own (random): leave nothing of it behind once its figures are taken."""
    keys = list(r.scan_iter(match=f"{namespace}:*", count=1000))
    for i in range(0, len(keys), 1000):
        r.unlink(*keys[i:i + 1000])


