"""Structured logs: with --log-format json, one JSON line per request at the API and one per job
attempt at the worker, tied by the request id (and the client's own); failures always logged;
prompts and answers never."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from broker.cli.embedded_redis import free_port
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import TEST_KEY
from tests.stacks import Proc, StackFactory, wait_for_http

SECRET_PROMPT = "the-prompt-must-never-be-logged-7731"


pytestmark = pytest.mark.upstream(chunks=2)


def json_lines(proc: Proc) -> list[dict[str, Any]]:
    lines = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_json_logs_have_a_line_per_request_and_per_job(stack_factory: StackFactory, upstream: UpstreamServer) -> None:
    stack = stack_factory({"up": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-upstream-secret-99"}},
                          {"m": [{"provider": "up", "model": "fake-model"}], "bad": [{"provider": "up", "model": "fail-500"}]})
    worker = stack.worker("up", "--log-level", "info", "--log-format", "json")
    port = free_port()
    api = Proc(["api", "--config", str(stack.config_path), "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "info", "--log-format", "json"], stack.log_dir / "api-json.log")
    stack.procs.append(api)
    base = f"http://127.0.0.1:{port}/v1"
    wait_for_http(f"{base}/models", api)
    headers = {"authorization": f"Bearer {TEST_KEY}", "x-client-request-id": "ticket-42"}
    ok = httpx.post(f"{base}/chat/completions", headers=headers, timeout=30,
                    json={"model": "m", "messages": [{"role": "user", "content": SECRET_PROMPT}]})
    failed = httpx.post(f"{base}/chat/completions", headers=headers, timeout=30,
                        json={"model": "bad", "messages": [{"role": "user", "content": SECRET_PROMPT}]})
    assert ok.status_code == 200 and failed.status_code == 502
    time.sleep(0.5)

    access = {line["request_id"]: line for line in json_lines(api) if line["logger"] == "llm_broker.access"}
    line = access[ok.headers["x-request-id"]]
    assert (line["status"], line["route"], line["tenant"], line["model"], line["lane"]) == (
        200, "/v1/chat/completions", "test", "m", "default")
    assert line["level"] == "INFO" and line["latency_ms"] > 0 and line["tokens"] > 0
    assert line["client_request_id"] == "ticket-42" and "key" in line
    bad = access[failed.headers["x-request-id"]]
    assert bad["status"] == 502 and bad["level"] == "WARNING"

    jobs = {line["request_id"]: line for line in json_lines(worker) if line["logger"] == "llm_broker.jobs"}
    job = jobs[ok.headers["x-request-id"]]
    assert (job["deployment"], job["outcome"], job["status"], job["client_request_id"]) == (
        "up/fake-model", "ok", 200, "ticket-42")
    assert job["latency_ms"] >= 0 and job["queue_wait_ms"] >= 0 and job["output_tokens"] > 0
    failure = jobs[failed.headers["x-request-id"]]
    assert (failure["level"], failure["outcome"], failure["status"]) == ("WARNING", "error", 502)
    assert failure["error"]

    for proc in (api, worker):  # no prompt, no upstream key
        text = proc.output()
        assert SECRET_PROMPT not in text and "sk-upstream-secret-99" not in text
