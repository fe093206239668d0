"""`llm-broker dev` on a machine with no Redis configured: embedded Redis, answers the SDK, stops on Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from broker.cli.dev import banner
from broker.cli.embedded_redis import free_port
from broker.config import default_config, hash_key, validate
from tests.harness import TEST_KEY, write_config

REPO = Path(__file__).resolve().parent.parent
# Only the Python interpreter's directory on PATH: no redis-server to find.
NO_REDIS_SERVER = str(Path(sys.executable).parent)


def has_redis_server() -> bool:
    return any((Path(d) / "redis-server").exists() for d in os.environ.get("PATH", "").split(os.pathsep))


class Dev:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, port: int) -> None:
        self.proc = proc
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def dev(tmp_path: Path, path_env: str, *args: str, cwd: Path = REPO) -> Iterator[Dev]:
    """`llm-broker dev` in a session of its own, as in a terminal: Ctrl-C reaches its whole process group."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LLM_BROKER_CONFIG")}
    env["PATH"] = path_env
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # from any `cwd`
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "broker.cli", "dev", "--port", str(port), *args],
                                stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
        running = Dev(proc, log_path, port)
        try:
            deadline = time.monotonic() + 30
            while "llm-broker dev is up" not in running.output():
                assert proc.poll() is None, running.output()
                assert time.monotonic() < deadline, running.output()
                time.sleep(0.1)
            yield running
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def ctrl_c(running: Dev) -> None:
    """What a terminal does on Ctrl-C: SIGINT to every process in the foreground group."""
    os.killpg(running.proc.pid, signal.SIGINT)
    assert running.proc.wait(30) == 0, running.output()
    assert "llm-broker dev stopped." in running.output()


def answers_the_sdk(running: Dev) -> None:
    assert running.base_url in running.output() and "sk-dev" in running.output()
    client = openai.OpenAI(base_url=running.base_url, api_key="sk-dev", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="mock-chat", messages=[{"role": "user", "content": "hi"}])
    # The dev tenant's limits are generous but real: the bucket counted this request.
    assert raw.headers["x-ratelimit-limit-requests"] == "100000"
    assert raw.headers["x-ratelimit-remaining-requests"] == "99999"
    answer = raw.parse()
    assert answer.choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="mock-chat", stream=True, messages=[{"role": "user", "content": "hi"}]
        ) if c.choices
    )
    assert streamed == answer.choices[0].message.content
    assert {m.id for m in client.models.list()} >= {"mock-chat"}


def test_dev_starts_a_redis_server_from_path_and_answers(tmp_path: Path) -> None:
    if not has_redis_server():
        pytest.skip("redis-server is not installed")
    with dev(tmp_path, os.environ["PATH"]) as running:
        answers_the_sdk(running)
        ctrl_c(running)
    assert "embedded redis-server" in running.output()


def test_dev_falls_back_to_fakeredis_without_redis_server(tmp_path: Path) -> None:
    with dev(tmp_path, NO_REDIS_SERVER) as running:
        answers_the_sdk(running)
        ctrl_c(running)
    assert "fakeredis" in running.output()


async def burst(base_url: str, *, requests: int, concurrency: int) -> list[str]:
    """Fire `requests` chat completions, `concurrency` at a time; the errors, if any."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-dev", max_retries=0)
    gate = asyncio.Semaphore(concurrency)
    errors: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            try:
                await client.chat.completions.create(model="mock-chat", messages=[{"role": "user", "content": f"{i}"}])
            except openai.APIError as exc:
                errors.append(str(exc))

    await asyncio.gather(*(one(i) for i in range(requests)))
    await client.close()
    return errors


def test_fakeredis_fallback_carries_a_burst(tmp_path: Path) -> None:
    # The API opens up to 64 pooled connections at once: every one must be accepted.
    with dev(tmp_path, NO_REDIS_SERVER) as running:
        errors = asyncio.run(burst(running.base_url, requests=200, concurrency=50))
        assert errors == [], running.output()
        ctrl_c(running)


def test_ctrl_c_lets_open_streams_finish_before_redis_stops(tmp_path: Path) -> None:
    if not has_redis_server():
        pytest.skip("redis-server is not installed")
    with dev(tmp_path, os.environ["PATH"]) as running:
        client = openai.OpenAI(base_url=running.base_url, api_key="sk-dev", max_retries=0)
        stream = client.chat.completions.create(  # 40 tokens, 50 ms apart
            model="mock-chat-slow", stream=True, messages=[{"role": "user", "content": "hi"}])
        pieces = []
        for chunk in stream:
            if not pieces:
                os.killpg(running.proc.pid, signal.SIGINT)  # mid-stream, the whole group: redis-server too
            pieces.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
        assert len([p for p in pieces if p]) == 40
        assert running.proc.wait(30) == 0, running.output()
    log = running.output()
    assert "llm-broker dev stopped." in log
    assert " WARNING " not in log and " ERROR " not in log and "Traceback" not in log, log


BATCH_LINE = (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
              b'"body": {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}}\n')


def upload(running: Dev, key: str) -> str:
    """A Batch API input file, uploaded with the SDK: its id."""
    client = openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0)
    return client.files.create(file=("in.jsonl", BATCH_LINE), purpose="batch").id


def files_dir(running: Dev) -> str:
    line = next(line for line in running.output().splitlines() if line.strip().startswith("files:"))
    return line.split(":", 1)[1].strip()


def test_dev_leaves_nothing_behind_in_its_start_directory_or_temp_dir(tmp_path: Path) -> None:
    start = tmp_path / "start"
    start.mkdir()
    with dev(tmp_path, os.environ["PATH"], cwd=start) as running:
        file_id = upload(running, "sk-dev")
        shown = files_dir(running)
        assert shown.endswith(" (removed at exit)"), shown
        store = Path(shown.removesuffix(" (removed at exit)"))
        assert (store / file_id).read_bytes() == BATCH_LINE
        scratch = store.parent  # the embedded Redis's working dir is in it too, with a redis-server
        assert not scratch.is_relative_to(start)
        ctrl_c(running)
    assert not scratch.exists()
    assert list(start.iterdir()) == []


def test_dev_keeps_the_files_where_its_config_puts_them(tmp_path: Path, namespace: str) -> None:
    kept = tmp_path / "kept-files"
    config = write_config(tmp_path / "config.yaml", namespace, providers={"mock": {"kind": "mock"}},
                          models={"mock-chat": [{"provider": "mock", "model": "mock-chat"}]},
                          batches={"files_dir": str(kept)})
    with dev(tmp_path, os.environ["PATH"], "--config", str(config), cwd=tmp_path) as running:
        file_id = upload(running, TEST_KEY)
        assert files_dir(running) == str(kept)
        ctrl_c(running)
    assert (kept / file_id).read_bytes() == BATCH_LINE


def dev_banner(tenants: dict[str, object] | None, api_key: str | None = None) -> str:
    config = default_config() if tenants is None else validate(
        {"providers": {"mock": {"kind": "mock"}}, "models": {"m": [{"provider": "mock", "model": "m"}]},
         "tenants": tenants}, source="test")
    return banner(config, argparse.Namespace(host="127.0.0.1", port=8080, api_key=api_key), "Redis: test")


def test_the_banner_shows_the_dev_key_only_where_it_works() -> None:
    assert 'api_key="sk-dev"' in dev_banner(None)
    with_config = dev_banner({"acme": {"keys": [hash_key("sk-acme")]}, "beta": {"keys": [hash_key("sk-b")]}})
    assert "sk-dev" not in with_config
    assert "tenants:  acme, beta" in with_config and 'api_key="<your key>"' in with_config
    # A config may keep the well-known dev key (a local setup): then it is the key that works.
    assert 'api_key="sk-dev"' in dev_banner({"local": {"keys": [hash_key("sk-dev")]}})
    assert "every request gets 401" in dev_banner({})


def test_dev_refuses_an_api_key_that_a_config_would_ignore(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("providers: {mock: {kind: mock}}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LLM_BROKER_CONFIG")}
    for args, extra_env in ((["--config", str(config)], {}), ([], {"LLM_BROKER_CONFIG": str(config)})):
        proc = subprocess.run([sys.executable, "-m", "broker.cli", "dev", *args, "--api-key", "sk-mine"],
                              capture_output=True, text=True, cwd=REPO, env={**env, **extra_env}, timeout=30)
        assert proc.returncode == 2
        assert proc.stderr.startswith("llm-broker: --api-key sets the key of the built-in dev tenant")
