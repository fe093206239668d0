"""Prometheus metrics: /metrics on the API (every process's, added up under --workers N) and on a
worker's --metrics-port parse as Prometheus text, and their counters move with traffic."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.cli.embedded_redis import free_port
from tests.harness import TEST_KEY
from tests.stacks import Stack, StackFactory

JOB_ID = re.compile(r"[0-9a-f]{32}")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition at `url`: (name, sorted labels) → value."""
    text = httpx.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def stack(module_stack_factory: StackFactory) -> Stack:
    stack = module_stack_factory({"mock": {"kind": "mock", "tokens": 4}}, {"m": [{"provider": "mock", "model": "m"}]})
    stack.metrics_port = free_port()
    stack.up(("mock", "--metrics-port", str(stack.metrics_port)), apis=(2,))
    return stack


def test_api_and_worker_metrics_count_the_traffic(stack: Stack) -> None:
    base = stack.base_url.removesuffix("/v1")
    before = scrape(f"{base}/metrics")
    client = openai.OpenAI(base_url=stack.base_url, api_key=TEST_KEY, max_retries=0)
    for i in range(10):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"count {i}"}])
    list(client.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": "s"}]))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    time.sleep(0.2)
    # Whichever of the two API processes answers the scrape, it reports both processes' counts.
    for _ in range(3):
        after = scrape(f"{base}/metrics")
        ok = ("llm_broker_requests_total", "/v1/chat/completions", "200", "m", "test")
        assert (value(after, ok[0], route=ok[1], status=ok[2], model=ok[3], tenant=ok[4])
                - value(before, ok[0], route=ok[1], status=ok[2], model=ok[3], tenant=ok[4])) == 11
        assert value(after, "llm_broker_requests_total", route="/v1/chat/completions", status="404", model="",
                     tenant="") - value(before, "llm_broker_requests_total", route="/v1/chat/completions",
                                        status="404", model="", tenant="") == 1
    assert value(after, "llm_broker_request_duration_seconds_count", route="/v1/chat/completions", model="m") >= 11
    # Read from Redis at scrape time.
    assert value(after, "llm_broker_live_workers", provider="mock") == 1
    assert ("llm_broker_queue_waiting", (("lane", "batch"), ("provider", "mock"))) in after
    assert value(after, "llm_broker_redis_up") == 1
    assert not any(JOB_ID.search(v) for _, labels in after for _, v in labels)  # no job ids as labels

    worker = scrape(f"http://127.0.0.1:{stack.metrics_port}/metrics")
    assert value(worker, "llm_broker_jobs_total", deployment="mock/m", outcome="ok") >= 11
    assert value(worker, "llm_broker_tokens_total", deployment="mock/m", kind="output") >= 11 * 4
    assert value(worker, "llm_broker_queue_wait_seconds_count", provider="mock", lane="default") >= 11
    assert value(worker, "llm_broker_time_to_first_token_seconds_count", deployment="mock/m") >= 1
    assert value(worker, "llm_broker_worker_heartbeats_total", provider="mock") >= 1
    assert value(worker, "llm_broker_jobs_in_flight", provider="mock") == 0


def test_status_and_queues_show_what_redis_holds(stack: Stack) -> None:
    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "broker.cli", *args, "--config", str(stack.config_path)],
                              capture_output=True, text=True, check=True).stdout

    worker = next(p for p in stack.procs if p.args[0] == "worker")
    worker.popen.send_signal(signal.SIGSTOP)  # frozen: the next job waits in its queue
    try:
        accepted = httpx.post(f"{stack.base_url}/chat/completions", timeout=10,
                              headers={"authorization": f"Bearer {TEST_KEY}", "prefer": "respond-async"},
                              json={"model": "m", "messages": [{"role": "user", "content": "wait"}]})
        assert accepted.status_code == 202
        rows = json.loads(cli("queues", "--json"))
        row = next(r for r in rows if r["lane"] == "batch")
        assert (row["provider"], row["tenant"], row["length"]) == ("mock", "test", 1)
        assert row["oldest_age_s"] >= 0
        text = cli("status")
        assert "mock" in text and "batch" in text
        status = json.loads(cli("status", "--json"))
        assert (status["providers"]["mock"]["kind"], status["providers"]["mock"]["live_workers"]) == ("mock", 1)
        assert status["deployments_today"]["mock/m"]["requests"] >= 11
        assert any(s["lane"] == "batch" and s["waiting"] == 1 for s in status["lanes"])
        assert status["spend_today"]["test"]["requests"] >= 11  # the traffic of the test above
    finally:
        worker.popen.send_signal(signal.SIGCONT)
