"""Routing by request shape: a model's `rules:` send what a cheaper model can answer to it."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from broker.config import ConfigError, hash_key, validate
from tests.conftest import TEST_KEY

LONG = " ".join(["word"] * 400)  # ~500 estimated tokens
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def base_url(module_stack_factory: Any) -> str:
    stack = module_stack_factory(
        {"cheap": {"kind": "mock", "tokens": 2}, "premium": {"kind": "mock", "tokens": 2}},
        {"economy": [{"provider": "cheap", "model": "small"}],
         "smart": {"deployments": [{"provider": "premium", "model": "big"}], "rules": [
             {"use": "economy", "max_prompt_tokens": 50, "tools": False, "images": False},
             {"use": "economy", "header": {"X-Cost-Tier": "economy"}},
             {"use": "economy", "lanes": ["batch"]}]}},
        # May ask for `smart` only: where its rules send a request is the operator's choice.
        tenants={"test": {"keys": [hash_key(TEST_KEY)], "models": ["smart"]}},
    )
    stack.worker("cheap")
    stack.worker("premium")
    return str(stack.api())


def served(client: openai.OpenAI, content: str, **extra: Any) -> tuple[str, str | None, str]:
    raw = client.chat.completions.with_raw_response.create(model="smart", messages=[{"role": "user", "content": content}],
                                                           **extra)
    return raw.headers["x-llm-broker-deployment"], raw.headers.get("x-llm-broker-route"), raw.parse().model


def test_a_short_plain_request_goes_to_the_cheaper_model_under_the_name_asked_for(client: openai.OpenAI) -> None:
    assert served(client, "What is 2 + 2?") == ("cheap/small", "economy", "smart")


def test_long_prompts_and_tools_stay_on_the_model_asked_for(client: openai.OpenAI) -> None:
    assert served(client, LONG) == ("premium/big", None, "smart")
    assert served(client, "Look it up", tools=[TOOL]) == ("premium/big", None, "smart")


def test_a_cost_tier_header_or_the_batch_lane_routes_too(client: openai.OpenAI) -> None:
    assert served(client, LONG, extra_headers={"X-Cost-Tier": "economy"})[:2] == ("cheap/small", "economy")
    assert served(client, LONG, extra_headers={"x-cost-tier": "premium"})[:2] == ("premium/big", None)
    assert served(client, LONG, extra_headers={"X-Priority": "batch"})[:2] == ("cheap/small", "economy")


@pytest.mark.parametrize("rules, phrase, at", [
    ([{"use": "nowhere", "tools": False}], "'nowhere' is not one", "$.models.smart.rules[0].use"),
    ([{"use": "economy"}], "a rule needs a condition", "$.models.smart.rules[0]"),
    ([{"use": "economy", "lanes": ["urgent"]}], "lanes are interactive", "$.models.smart.rules[0].lanes"),
    ([{"use": "other", "tools": False}], "may not have rules of its own ('other' has)", "$.models.smart.rules[0].use"),
])
def test_rules_are_checked_at_load(rules: list[dict[str, Any]], phrase: str, at: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate({"providers": {"a": {"kind": "mock"}},
                  "models": {"economy": [{"provider": "a", "model": "s"}],
                             "other": {"deployments": [{"provider": "a", "model": "o"}],
                                       "rules": [{"use": "economy", "tools": False}]},
                             "smart": {"deployments": [{"provider": "a", "model": "b"}], "rules": rules}},
                  "tenants": {}}, source="test")
    assert phrase in str(info.value) and str(info.value).endswith(f"- at `{at}`")
