"""GET /healthz and /readyz (api/routes/health.py, broker/ops/readiness.py) on a real API process, its
workers and a Redis of the test's own (which it flushes of scripts, then kills)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import redis

from broker.config import validate
from broker.ops.readiness import served_providers
from tests.harness import RedisServer
from tests.stacks import StackFactory

PROVIDERS = {"mock": {"kind": "mock"}, "other": {"kind": "mock"}, "spare": {"kind": "mock"}}
MODELS = {"m": [{"provider": "mock", "model": "m"}], "o": {"deployments": [{"provider": "other", "model": "o"}]}}


def probe(root: str, path: str) -> httpx.Response:
    return httpx.get(f"{root}{path}", timeout=10)  # no API key: orchestrators have none


def until(root: str, status: int) -> httpx.Response:
    end = time.monotonic() + 10
    while (resp := probe(root, "/readyz")).status_code != status:
        assert time.monotonic() < end, resp.text
        time.sleep(0.05)
    return resp


def test_readyz_names_what_is_missing_until_every_served_provider_has_a_live_worker(
        stack_factory: StackFactory, own_redis: RedisServer) -> None:
    stack = stack_factory(PROVIDERS, MODELS, redis_url=own_redis.url)
    root = stack.api().removesuffix("/v1")
    assert (probe(root, "/healthz").status_code, probe(root, "/healthz").json()) == (200, {"status": "ok"})
    resp = probe(root, "/readyz")
    # `spare` serves no model: nobody needs a worker for it.
    assert resp.status_code == 503
    assert resp.json() == {"status": "unready", "missing": ["no live worker for provider 'mock'",
                                                            "no live worker for provider 'other'"]}
    stack.worker("mock")
    assert probe(root, "/readyz").json()["missing"] == ["no live worker for provider 'other'"]
    last = stack.worker("other")
    assert (probe(root, "/readyz").status_code, probe(root, "/readyz").json()) == (200, {"status": "ok"})

    last.stop()  # SIGTERM: the worker leaves the live set as it exits
    assert until(root, 503).json()["missing"] == ["no live worker for provider 'other'"]
    stack.worker("other")
    until(root, 200)

    # Redis restarted without its scripts: the probe loads them back rather than keep traffic away.
    client = redis.Redis.from_url(own_redis.url)
    client.script_flush()
    assert probe(root, "/readyz").status_code == 200
    assert all(client.script_exists(*[_sha(name) for name in ("enqueue", "admit", "finish")]))

    own_redis.kill()
    resp = until(root, 503)
    assert resp.json() == {"status": "unready", "missing": ["Redis does not answer (ConnectionError)"]}
    assert probe(root, "/healthz").status_code == 200  # alive all the same: nothing to restart


def _sha(name: str) -> str:
    import hashlib

    from broker.store.scripts import lua_script

    return hashlib.sha1(lua_script(name).encode()).hexdigest()


def test_only_providers_that_serve_a_model_need_workers() -> None:
    config = validate({"providers": PROVIDERS, "models": MODELS}, source="test")
    assert served_providers(config) == ["mock", "other"]


def test_a_worker_with_a_health_file_touches_it_every_heartbeat(stack_factory: StackFactory, tmp_path: Path) -> None:
    stack = stack_factory({"mock": {"kind": "mock"}}, {"m": [{"provider": "mock", "model": "m"}]},
                          queue={"heartbeat_interval_s": 0.2})
    alive = tmp_path / "worker.alive"
    stack.worker("mock", "--health-file", str(alive))
    first = alive.stat().st_mtime
    end = time.monotonic() + 5
    while alive.stat().st_mtime == first:
        assert time.monotonic() < end
        time.sleep(0.05)
