"""A model group's strategy picks its first deployment: cost, latency, least-busy (weighted is in
test_failover.py). The official SDK as the client, the mock provider as the upstreams."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.harness import TEST_KEY
from tests.stacks import StackFactory


@pytest.fixture(scope="module")
def client(module_stack_factory: StackFactory) -> openai.OpenAI:
    providers = {"cheap": {"kind": "mock", "tokens": 2}, "dear": {"kind": "mock", "tokens": 2},
                 "quick": {"kind": "mock", "tokens": 2},
                 "sluggish": {"kind": "mock", "tokens": 2, "first_token_delay_s": 0.3},
                 "one": {"kind": "mock", "tokens": 2, "first_token_delay_s": 1.0},
                 "other": {"kind": "mock", "tokens": 2, "first_token_delay_s": 1.0}}
    stack = module_stack_factory(providers, {
        "thrifty": {"strategy": "cost", "deployments": [
            {"provider": "dear", "model": "d", "input_per_mtok": 5.0, "output_per_mtok": 15.0},
            {"provider": "cheap", "model": "c", "input_per_mtok": 0.15, "output_per_mtok": 0.6}]},
        "snappy": {"strategy": "latency", "deployments": [
            {"provider": "sluggish", "model": "s"}, {"provider": "quick", "model": "q"}]},
        "spread": {"strategy": "least-busy", "deployments": [
            {"provider": "one", "model": "1"}, {"provider": "other", "model": "2"}]},
    })
    return openai.OpenAI(base_url=stack.up(*providers), api_key=TEST_KEY, max_retries=0)


def served_by(client: openai.OpenAI, model: str, prompt: str = "hi") -> str:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": prompt}])
    raw.parse()
    return raw.headers["x-llm-broker-deployment"]


def test_cost_picks_the_cheapest_deployment_for_the_request(client: openai.OpenAI) -> None:
    assert {served_by(client, "thrifty", f"q{i}") for i in range(3)} == {"cheap/c"}


def test_latency_picks_the_deployment_that_answers_fastest(client: openai.OpenAI) -> None:
    # Each unmeasured deployment is tried once (and so measured); then the quick one keeps it.
    served = [served_by(client, "snappy", f"q{i}") for i in range(6)]
    assert set(served[:2]) == {"sluggish/s", "quick/q"}
    assert served[2:] == ["quick/q"] * 4


def test_least_busy_picks_the_deployment_with_fewest_calls_in_flight(client: openai.OpenAI) -> None:
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(served_by, client, "spread", "a")
        time.sleep(0.4)  # the first call is running on its deployment (each takes 1 s)
        second = pool.submit(served_by, client, "spread", "b")
        assert {first.result(), second.result()} == {"one/1", "other/2"}
    # Both finished: nothing in flight, so the listed order decides again.
    assert served_by(client, "spread", "c") == "one/1"
