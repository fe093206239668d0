"""Dead letters (broker/queue/dead_letters.py): a job failing upstream on every attempt lands in its
provider's dead-letter stream, `llm-broker dead list` shows it, and `llm-broker dead replay` runs
it again, here once the config points its model at a deployment that works. Real API and worker
processes, the protocol-faithful fake upstream, the real command line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml

from broker.config import validate
from broker.errors import ErrorInfo
from broker.keys import Keys
from broker.queue.jobs import Final, Job, reply_decoder
from broker.queue.payloads import EmbeddingPayload
from broker.wire import EmbeddingRequest
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import REDIS_URL, REPO, TEST_KEY
from tests.stacks import Stack, StackFactory

AUTH = {"authorization": f"Bearer {TEST_KEY}"}
MESSAGES = [{"role": "user", "content": "unlucky"}]


pytestmark = pytest.mark.upstream(chunks=3)


@pytest.fixture(scope="module")
def stack(module_stack_factory: StackFactory, upstream: UpstreamServer) -> Stack:
    stack = module_stack_factory(
        {"up": {"kind": "openai", "base_url": upstream.base_url}},
        # Each model its own upstream model id ("fail-503@x" fails as "fail-503"), so tests share no circuit.
        {"down": [{"provider": "up", "model": "fail-503@down"}],
         "down-async": [{"provider": "up", "model": "fail-503@async"}],
         "gone": [{"provider": "up", "model": "fail-500@gone"}],
         "refused": [{"provider": "up", "model": "fail-400"}]},
        circuit={"failures": 1000, "min_calls": 1000})
    stack.up("up")
    return stack


def dead(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LLM_BROKER_CONFIG"}
    return subprocess.run([sys.executable, "-m", "broker.cli", "dead", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60)


def listed(stack: Stack) -> dict[str, dict[str, Any]]:
    proc = dead(stack.config_path, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    return {row["job_id"]: row for row in map(json.loads, proc.stdout.splitlines())}


def fixed_config(stack: Stack, **models: str) -> Path:
    """The stack's config with `models` now served by a healthy upstream model (the operator's fix)."""
    doc = yaml.safe_load(stack.config_path.read_text())
    for name, upstream_model in models.items():
        doc["models"][name] = [{"provider": "up", "model": upstream_model}]
    path = stack.config_path.with_name(f"fixed-{'-'.join(models)}.yaml")
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_job_failing_on_every_attempt_is_listed_with_its_attempts_and_last_error(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.base_url, api_key=TEST_KEY, max_retries=0,
                           default_headers={"X-Client-Request-Id": "ticket-7"})
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="down", messages=MESSAGES)
    job_id = info.value.response.headers["x-request-id"].removeprefix("req_")
    row = listed(stack)[job_id]
    assert {k: row[k] for k in ("provider", "tenant", "model", "deployment", "lane", "attempts", "status")} == {
        "provider": "up", "tenant": "test", "model": "down", "deployment": "up/fail-503@down", "lane": "default",
        "attempts": 2,  # the call and the provider's one retry
        "status": 503}
    assert row["error"] == info.value.body["message"]  # type: ignore[index]  # what the client was told
    table = dead(stack.config_path, "list", "--provider", "up").stdout
    assert job_id in table.split("\n", 1)[1] and "attempts" in table.split("\n", 1)[0]
    # The worker's line about the failed call names the request by our id and the client's.
    worker_log = next(p for p in stack.procs if "worker" in p.args).output()
    assert f"[req_{job_id} client ticket-7]" in worker_log


def test_the_requests_own_errors_are_not_dead_lettered(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai.OpenAI(base_url=stack.base_url, api_key=TEST_KEY, max_retries=0).chat.completions.create(
            model="refused", messages=MESSAGES)
    assert info.value.response.headers["x-request-id"].removeprefix("req_") not in listed(stack)


def test_a_replay_runs_the_job_again_and_its_async_client_gets_the_answer(stack: Stack,
                                                                          upstream: UpstreamServer) -> None:
    http = httpx.Client(base_url=stack.base_url, headers=AUTH, timeout=30)
    job_id = http.post("/chat/completions", json={"model": "down-async", "messages": MESSAGES},
                       headers={"prefer": "respond-async"}).json()["id"]
    end = time.monotonic() + 20
    while (view := http.get(f"/jobs/{job_id}").json())["status"] in ("queued", "in_progress"):
        assert time.monotonic() < end
        time.sleep(0.05)
    assert view["status"] == "failed" and job_id in listed(stack)

    proc = dead(fixed_config(stack, **{"down-async": "fake-model@replayed"}), "replay", f"req_{job_id}")
    assert (proc.returncode, proc.stdout.strip()) == (0, f"replayed {job_id} on up/fake-model@replayed"), proc.stderr
    assert job_id not in listed(stack)
    end = time.monotonic() + 20
    while (view := http.get(f"/jobs/{job_id}").json())["status"] != "completed":
        assert view["status"] in ("queued", "in_progress"), view
        assert time.monotonic() < end
        time.sleep(0.05)
    assert view["response"]["choices"][0]["message"]["content"]
    assert view["expires_at"] > time.time() + 60  # a fresh deadline, not the one it failed by


def test_a_replayed_synchronous_job_is_served_and_its_answer_kept(stack: Stack, module_namespace: str) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        openai.OpenAI(base_url=stack.base_url, api_key=TEST_KEY, max_retries=0).chat.completions.create(
            model="gone", messages=MESSAGES)
    job_id = info.value.response.headers["x-request-id"].removeprefix("req_")
    assert listed(stack)[job_id]["status"] == 502

    still_broken = dead(stack.config_path, "replay", job_id)  # the same cause: it fails, and is back in dead
    assert still_broken.returncode == 0
    end = time.monotonic() + 20
    while job_id not in listed(stack):
        assert time.monotonic() < end
        time.sleep(0.05)
    # Its old entry went with the replay: one entry, the new failure's.
    assert dead(stack.config_path, "list", "--json").stdout.count(f'"job_id":"{job_id}"') == 1

    # --all: the earlier tests' dead letters too, whose models the fix covers as well.
    proc = dead(fixed_config(stack, gone="fake-model", down="fake-model@down"), "replay", "--all")
    assert proc.returncode == 0 and f"replayed {job_id} on up/fake-model\n" in proc.stdout, proc.stderr
    result = redis.Redis.from_url(REDIS_URL)
    end = time.monotonic() + 20
    while (stored := result.get(Keys(module_namespace).result(job_id))) is None or isinstance(
            reply_decoder.decode(stored), Final) is False:
        assert time.monotonic() < end
        time.sleep(0.05)
    assert json.loads(reply_decoder.decode(stored).body)["model"]  # type: ignore[union-attr]
    assert listed(stack) == {}


def test_a_replay_that_cannot_be_queued_stays_dead(stack: Stack) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        openai.OpenAI(base_url=stack.base_url, api_key=TEST_KEY, max_retries=0).chat.completions.create(
            model="down", messages=MESSAGES)
    job_id = info.value.response.headers["x-request-id"].removeprefix("req_")
    doc = yaml.safe_load(stack.config_path.read_text())
    del doc["models"]["down"]
    removed = stack.config_path.with_name("removed.yaml")
    removed.write_text(yaml.safe_dump(doc))
    proc = dead(removed, "replay", job_id)
    assert proc.returncode == 1 and f"not replayed {job_id}: The model `down` does not exist" in proc.stderr
    assert job_id in listed(stack)
    assert dead(stack.config_path, "replay", "no-such-job").returncode == 2
    assert dead(stack.config_path, "replay").returncode == 2  # ids or --all


async def test_dead_letters_are_trimmed_by_age_and_count(namespace: str) -> None:
    from redis.asyncio import Redis as AsyncRedis

    from broker.queue import dead_letters

    config = validate({"namespace": namespace, "providers": {"p": {"kind": "mock"}},
                       "queue": {"dead_letter_retention_s": 1, "dead_letter_maxlen": 5}}, source="test")
    keys, client = Keys(namespace), AsyncRedis.from_url(REDIS_URL)
    error = ErrorInfo(kind="UpstreamError", message="down", status=502, type="upstream_error", retryable=True)

    def job(n: int) -> Job:
        return Job(id=f"j{n}", tenant="t", model="m", provider="p", upstream_model="m", reply_to="", created=0,
                   deadline=0, payload=EmbeddingPayload(EmbeddingRequest(model="m", input="x")))
    try:
        await dead_letters.add(client, keys, config.queue, job(0), error, 1)
        assert 0 < await client.pttl(keys.dead_letters("p")) <= 1000  # gone a retention after its newest entry
        await asyncio.sleep(1.1)
        await dead_letters.add(client, keys, config.queue, job(1), error, 1)
        assert [f.letter.job_id for f in await dead_letters.read(client, keys, ["p"])] == ["j1"]
        for n in range(2, 400):  # MAXLEN ~ trims whole nodes: about 5, never unbounded
            await dead_letters.add(client, keys, config.queue, job(n), error, 1)
        assert await client.xlen(keys.dead_letters("p")) < 200
    finally:
        await client.aclose()
