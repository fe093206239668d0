"""Every request priced, and the usage ledger: cost on answers (SDK), /v1/usage, charged exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
import openai
import pytest

from broker.config import BedrockProvider, Deployment, MockProvider, OpenAIProvider, VertexProvider, hash_key
from broker.money.pricing import FREE, Price, charge, resolve, shipped_price
from broker.wire import Usage
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import TEST_KEY
from tests.stacks import Stack, StackFactory
from workers.providers.anthropic_translate import map_usage
from workers.providers.anthropic_wire import AnthropicUsage
from workers.providers.bedrock_translate import usage as bedrock_usage
from workers.providers.bedrock_wire import TokenUsage
from workers.providers.gemini_translate import usage as gemini_usage
from workers.providers.gemini_wire import UsageMetadata

OTHER_KEY = "sk-other-tenant-0001"
PRICE = {"input_per_mtok": 3.0, "output_per_mtok": 15.0, "cached_input_per_mtok": 0.3}


def expected_cost(prompt: int, completion: int, cached: int = 0) -> float:
    return ((prompt - cached) * 3.0 + cached * 0.3 + completion * 15.0) / 1e6


# ---------------------------------------------------------------- prices, unit level


def test_cost_is_exact_for_each_providers_usage_shape() -> None:
    price = Price(3.0, 15.0, 0.3)
    # OpenAI: cached tokens are inside prompt_tokens.
    openai_usage = Usage(1000, 200, 1200, prompt_tokens_details={"cached_tokens": 400})
    assert price.cost_nanos(openai_usage) == round((600 * 3.0 + 400 * 0.3 + 200 * 15.0) * 1000)
    # Anthropic counts cache reads apart from input_tokens; the adapter folds them in as OpenAI does.
    anthropic = map_usage(AnthropicUsage(input_tokens=600, output_tokens=200, cache_read_input_tokens=400))
    assert price.cost_nanos(anthropic) == price.cost_nanos(openai_usage)
    # Gemini's prompt count includes its cached content.
    gemini = gemini_usage(UsageMetadata(prompt_token_count=1000, cached_content_token_count=400,
                                        candidates_token_count=200))
    assert gemini is not None and price.cost_nanos(gemini) == price.cost_nanos(openai_usage)
    # Bedrock's Converse counts cache reads (and writes) apart from inputTokens, as Anthropic does.
    bedrock = bedrock_usage(TokenUsage(input_tokens=600, output_tokens=200, cache_read_input_tokens=400))
    assert bedrock is not None and price.cost_nanos(bedrock) == price.cost_nanos(openai_usage)


def test_prices_come_from_config_then_the_table_then_self_hosting_else_none() -> None:
    hosted = OpenAIProvider(base_url="https://api.openai.com/v1")
    assert resolve(Deployment(provider="p", model="gpt-4o-mini", input_per_mtok=1.0), hosted) == Price(1.0, 0.0, 1.0)
    assert resolve(Deployment(provider="p", model="gpt-4o-mini-2024-07-18"), hosted) == shipped_price("gpt-4o-mini")
    assert shipped_price("gpt-4o-2024-08-06") == shipped_price("gpt-4o") != shipped_price("gpt-4o-mini")
    assert resolve(Deployment(provider="p", model="Qwen/Qwen2.5-7B"), OpenAIProvider(base_url="x", profile="vllm")) == FREE
    assert resolve(Deployment(provider="p", model="anything"), MockProvider()) == FREE
    assert resolve(Deployment(provider="p", model="my-finetune"), hosted) is None  # unpriced, never free
    # Bedrock: by its model ids; a cross-region inference profile (or its ARN) costs what its model costs.
    bedrock = BedrockProvider(region="us-east-1")
    haiku = resolve(Deployment(provider="b", model="anthropic.claude-3-5-haiku-20241022-v1:0"), bedrock)
    assert haiku == Price(0.80, 4.00, 0.08) == resolve(
        Deployment(provider="b", model="us.anthropic.claude-3-5-haiku-20241022-v1:0"), bedrock)
    assert resolve(Deployment(provider="b", model="arn:aws:bedrock:eu-west-1:123456789012:inference-profile/"
                                                 "eu.amazon.nova-lite-v1:0"), bedrock) == Price(0.06, 0.24, 0.015)
    assert resolve(Deployment(provider="b", model="mistral.mistral-large-2402-v1:0"), bedrock) != resolve(
        Deployment(provider="b", model="mistral.mistral-large-2407-v1:0"), bedrock)


def test_vertex_deployments_are_priced_at_vertexs_prices_then_the_makers() -> None:
    vertex = VertexProvider(project="p-1", publisher="anthropic")
    assert resolve(Deployment(provider="v", model="gemini-2.0-flash-001"), vertex) == Price(0.15, 0.60, 0.0375)
    assert shipped_price("gemini-2.0-flash") == Price(0.10, 0.40, 0.025)  # the Developer API's, for `gemini`
    assert resolve(Deployment(provider="v", model="claude-3-5-haiku@20241022"), vertex) == Price(0.80, 4.00, 0.08)
    assert resolve(Deployment(provider="v", model="claude-3-haiku@20240307"), vertex) == shipped_price("claude-3-haiku")


def test_a_job_without_reported_usage_is_charged_for_what_went_by() -> None:
    price = Price(3.0, 15.0, 0.3)
    cut = charge(price, None, prompt_estimate=100, output_chars=41, answered=False)
    assert (cut.input_tokens, cut.output_tokens, cut.estimated) == (100, 11, True)
    assert cut.cost_nanos == round((100 * 3.0 + 11 * 15.0) * 1000)
    # A call that failed before any output costs nothing; an unpriced one is None, not 0.
    assert charge(price, None, prompt_estimate=100, output_chars=0, answered=False).cost_nanos == 0
    assert charge(None, Usage(1, 1, 2), prompt_estimate=1, output_chars=0, answered=True).cost_nanos is None


# ---------------------------------------------------------------- through the broker


pytestmark = pytest.mark.upstream(chunks=4)


@pytest.fixture(scope="module")
def stack(module_stack_factory: StackFactory, upstream: UpstreamServer) -> Stack:
    first = {"provider": "up", "model": "fake-model", **PRICE}
    stack = module_stack_factory(
        {"up": {"kind": "openai", "base_url": upstream.base_url}, "other": {"kind": "openai", "base_url": upstream.base_url}},
        {"priced": [first], "unpriced": [{"provider": "up", "model": "my-finetune"}],
         "failing-over": [{"provider": "up", "model": "fail-503@ledger"}, {"provider": "other", "model": "fake-model", **PRICE}],
         "stalls": [{"provider": "up", "model": "hang-stream", **PRICE}]},
        tenants={"test": {"keys": [hash_key(TEST_KEY)]}, "other": {"keys": [hash_key(OTHER_KEY)]}},
        # A stream whose client left is cancelled (and charged) after the resume grace: by default 5 s,
        # as long as until_counted waits. A short one takes the same path, with time to spare.
        server={"stream_resume_grace_s": 0.2},
    )
    stack.up("up", "other")
    return stack


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> str:
    return str(stack.base_url)


def usage_report(base_url: str, key: str = TEST_KEY, **params: str) -> dict[str, Any]:
    answer = httpx.get(f"{base_url}/usage", params=params, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def row_for(report: dict[str, Any], **where: str) -> dict[str, Any]:
    rows = [r for r in report["data"] if all(r.get(k) == v for k, v in where.items())]
    assert len(rows) == 1, report
    return rows[0]


def until_counted(base_url: str, model: str, requests: int, timeout_s: float = 5, **params: str) -> dict[str, Any]:
    end = time.monotonic() + timeout_s
    while True:  # the ledger is written with the job's end, which may land just after the client's answer
        report = usage_report(base_url, **{"group_by": "model", **params})
        rows = [r for r in report["data"] if r["model"] == model]
        if rows and rows[0]["requests"] >= requests or time.monotonic() > end:
            return report
        time.sleep(0.05)


def counted(base_url: str, model: str) -> int:
    """The model's requests in the ledger now: a test that adds one waits for this + 1, since the module's
    earlier tests may have counted some already."""
    return sum(r["requests"] for r in usage_report(base_url, group_by="model")["data"] if r["model"] == model)


def test_answers_carry_their_cost_and_the_ledger_adds_them_up_to_the_cent(client: openai.OpenAI,
                                                                          base_url: str) -> None:
    costs = []
    for i in range(3):
        raw = client.chat.completions.with_raw_response.create(model="priced",
                                                               messages=[{"role": "user", "content": f"price {i}"}])
        completion = raw.parse()
        assert completion.usage is not None
        cost = completion.usage.cost  # type: ignore[attr-defined]
        assert cost == pytest.approx(expected_cost(completion.usage.prompt_tokens, completion.usage.completion_tokens))
        assert float(raw.headers["x-llm-broker-cost-usd"]) == pytest.approx(cost)
        costs.append(cost)
    stream = client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "price stream"}],
                                            stream=True, stream_options={"include_usage": True})
    last = list(stream)[-1]
    assert last.usage is not None and last.usage.cost == pytest.approx(  # type: ignore[attr-defined]
        expected_cost(last.usage.prompt_tokens, last.usage.completion_tokens))
    costs.append(last.usage.cost)  # type: ignore[attr-defined]
    row = row_for(until_counted(base_url, "priced", 4), model="priced")
    assert row["requests"] == 4 and row["errors"] == 0 and row["estimated"] == 0
    assert round(row["cost_usd"], 2) == round(sum(costs), 2)
    assert row["cost_nanos"] == sum(round(c * 1e9) for c in costs)


def test_an_unpriced_deployment_is_reported_as_such_never_as_free(client: openai.OpenAI, base_url: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model="unpriced", messages=[{"role": "user", "content": "?"}])
    completion = raw.parse()
    assert completion.usage is not None and getattr(completion.usage, "cost", None) is None
    assert "x-llm-broker-cost-usd" not in raw.headers
    row = row_for(until_counted(base_url, "unpriced", 1), model="unpriced")
    assert row["unpriced"] == row["requests"] == 1


def test_a_failed_over_request_is_charged_once_where_it_was_served(client: openai.OpenAI, base_url: str) -> None:
    client.chat.completions.create(model="failing-over", messages=[{"role": "user", "content": "move on"}])
    report = until_counted(base_url, "failing-over", 1, group_by="model,deployment")
    rows = [r for r in report["data"] if r["model"] == "failing-over"]
    assert [(r["deployment"], r["requests"], r["errors"]) for r in rows] == [("other/fake-model", 1, 0)]


def test_a_cancelled_stream_is_charged_for_what_was_sent(base_url: str) -> None:
    with httpx.stream("POST", f"{base_url}/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                      json={"model": "stalls", "stream": True, "messages": [{"role": "user", "content": "hang"}]},
                      timeout=10) as answer:
        for line in answer.iter_lines():
            if '"content"' in line:
                break  # the first words arrived; the rest stalls: leave
    # Cancelled once nobody resumed the stream for server.stream_resume_grace_s (5 s), then counted.
    report = until_counted(base_url, "stalls", 1, timeout_s=15)
    row = row_for(report, model="stalls")
    assert (row["requests"], row["cancelled"], row["estimated"]) == (1, 1, 1)
    # The prompt was read upstream (its first chunk came); its one chunk held no text yet.
    assert row["input_tokens"] > 0 and row["output_tokens"] == 0
    assert row["cost_nanos"] == round(row["input_tokens"] * 3.0 * 1000)


def test_usage_is_tenant_scoped_and_its_query_is_checked(client: openai.OpenAI, base_url: str) -> None:
    before = counted(base_url, "priced")
    client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "mine"}])
    until_counted(base_url, "priced", before + 1)
    theirs = usage_report(base_url, OTHER_KEY, group_by="model")
    assert theirs["data"] == [] and theirs["total"]["requests"] == 0
    for params, param in (({"start": "2026-13-01"}, "start"), ({"group_by": "colour"}, "group_by"),
                          ({"start": "2020-01-01", "end": "2026-01-01"}, "start")):
        answer = httpx.get(f"{base_url}/usage", params=params, headers={"authorization": f"Bearer {TEST_KEY}"})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param
    by_day = usage_report(base_url)
    assert [set(r) >= {"day", "requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "errors"}
            for r in by_day["data"]] == [True]


def test_the_cli_prints_the_same_report_and_check_config_warns_of_unpriced_deployments(
    client: openai.OpenAI, base_url: str, stack: Stack
) -> None:
    # The module's earlier tests counted "priced" requests already: wait for this one's own record, or the
    # CLI may read the ledger after it lands and the API before (a run on 3 xdist workers met that).
    before = counted(base_url, "priced")
    client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "cli"}])
    api = until_counted(base_url, "priced", before + 1)
    cli = [sys.executable, "-m", "broker.cli"]
    printed = subprocess.run([*cli, "usage", "--config", str(stack.config_path), "--tenant", "test", "--group-by",
                              "model", "--json"], capture_output=True, text=True, check=True).stdout
    assert json.loads(printed) == usage_report(base_url, group_by="model") == api
    table = subprocess.run([*cli, "usage", "--config", str(stack.config_path), "--tenant", "test", "--group-by",
                            "model"], capture_output=True, text=True, check=True).stdout
    assert table.splitlines()[0].split()[:3] == ["model", "requests", "input_tokens"]
    assert any(line.startswith("priced ") for line in table.splitlines()) and "total" in table
    checked = subprocess.run([*cli, "check-config", "--config", str(stack.config_path)], capture_output=True, text=True)
    assert checked.returncode == 0 and "warning: up/my-finetune has no known price" in checked.stderr
    assert "fake-model" not in checked.stderr
