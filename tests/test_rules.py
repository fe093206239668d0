"""A model's `rules:` route by request shape (broker/routing/rules.py): the matching itself, the config checks,
and the official SDK against a real stack, with mock providers as the groups."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import msgspec
import openai
import pytest
import yaml

from broker.config import ConfigError, hash_key, load
from broker.routing.rules import Rule, first_match
from broker.wire import ChatRequest, EmbeddingRequest
from tests.harness import TEST_KEY
from tests.stacks import StackFactory

SHORT = "hi"
LONG = "word " * 100  # ~128 estimated tokens
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
IMAGE = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]


def chat(content: Any = SHORT, **fields: Any) -> ChatRequest:
    return msgspec.convert({"model": "smart", "messages": [{"role": "user", "content": content}], **fields},
                           ChatRequest)


def use(req: ChatRequest | EmbeddingRequest, rules: list[Rule], *, lane: str = "default",
        headers: dict[str, str] | None = None) -> str | None:
    rule = first_match(rules, req, lane=lane, headers=headers or {})
    return rule.use if rule else None


# ------------------------------------------------------------------ matching


def test_every_condition_of_a_rule_must_hold() -> None:
    cheap = [Rule(use="eco", max_prompt_tokens=50, tools=False, images=False)]
    assert use(chat(), cheap) == "eco"
    assert use(chat(LONG), cheap) is None
    assert use(chat(tools=[TOOL]), cheap) is None
    assert use(chat(IMAGE), cheap) is None
    # Legacy `functions` (kept in extra_body for upstreams) are tools too.
    assert use(chat(extra_body={"functions": [TOOL["function"]]}), cheap) is None
    assert use(chat(extra_body={"user_tag": "x"}), cheap) == "eco"


def test_tools_and_images_true_ask_for_them() -> None:
    assert use(chat(tools=[TOOL]), [Rule(use="agent", tools=True)]) == "agent"
    assert use(chat(), [Rule(use="agent", tools=True)]) is None
    assert use(chat(IMAGE), [Rule(use="eyes", images=True)]) == "eyes"


def test_the_first_matching_rule_wins() -> None:
    rules = [Rule(use="bulk", lanes=["batch"]), Rule(use="eco", max_prompt_tokens=50)]
    assert use(chat(), rules, lane="batch") == "bulk"
    assert use(chat(), rules, lane="interactive") == "eco"
    assert use(chat(LONG), rules, lane="interactive") is None


def test_a_header_matches_by_name_in_any_case_and_by_exact_value() -> None:
    rules = [Rule(use="eco", header={"X-Cost-Tier": "economy"})]
    assert use(chat(LONG), rules, headers={"x-cost-tier": "economy"}) == "eco"
    assert use(chat(), rules, headers={"x-cost-tier": "premium"}) is None
    assert use(chat(), rules, headers={"x-cost-tier": "Economy"}) is None
    assert use(chat(), rules) is None


def test_rules_apply_to_other_endpoints_by_their_prompt_size() -> None:
    rules = [Rule(use="eco", max_prompt_tokens=50, tools=False, images=False)]
    assert use(EmbeddingRequest(model="smart", input="a few words"), rules) == "eco"
    assert use(EmbeddingRequest(model="smart", input=LONG), rules) is None


# ------------------------------------------------------------------ config


BASE: dict[str, Any] = {
    "providers": {"m": {"kind": "mock"}},
    "models": {
        "smart": {"deployments": [{"provider": "m", "model": "big"}],
                  "rules": [{"use": "eco", "max_prompt_tokens": 50}]},
        "eco": [{"provider": "m", "model": "small"}],
    },
    "tenants": {"t": {"keys": [hash_key("sk-t")]}},
}


def load_with_rule(tmp_path: Path, rule: dict[str, Any], **models: Any) -> None:
    doc = copy.deepcopy(BASE)
    doc["models"]["smart"]["rules"].append(rule)
    doc["models"].update(models)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    load(path, env={})


def test_rules_decode_into_the_model_group(tmp_path: Path) -> None:
    load_with_rule(tmp_path, {"use": "eco", "lanes": ["batch"], "header": {"X-Cost-Tier": "economy"}})


@pytest.mark.parametrize(("rule", "models", "expected"), [
    ({"use": "nowhere", "tools": False}, {},
     "'nowhere' is not one - at `$.models.smart.rules[1].use`"),
    ({"use": "smart", "tools": False}, {}, "'smart' is not one - at `$.models.smart.rules[1].use`"),
    ({"use": "loopy", "tools": False},
     {"loopy": {"deployments": [{"provider": "m", "model": "l"}], "rules": [{"use": "eco", "images": False}]}},
     "'loopy' has rules of its own; a rule's target may not (routing takes one step) - at `$.models.smart.rules[1].use`"),
    ({"use": "eco"}, {}, "a rule needs at least one condition (max_prompt_tokens, tools, images, lanes, header)"
                         " - at `$.models.smart.rules[1]`"),
    ({"use": "eco", "lanes": ["bulk"]}, {}, "lanes are one or more of interactive, default, batch"
                                            " - at `$.models.smart.rules[1].lanes`"),
    ({"use": "eco", "lanes": []}, {}, "- at `$.models.smart.rules[1].lanes`"),
    ({"use": "eco", "header": {}}, {}, "- at `$.models.smart.rules[1].header`"),
    ({"use": "eco", "max_prompt_tokens": "short"}, {}, "- at `$.models.smart.rules[1].max_prompt_tokens`"),
    ({"use": "eco", "tokens_below": 10}, {}, "unknown field `tokens_below` - at `$.models.smart.rules[1]`"),
])
def test_rule_errors_name_the_field(tmp_path: Path, rule: dict[str, Any], models: dict[str, Any],
                                    expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_with_rule(tmp_path, rule, **models)
    assert expected in str(info.value)


# ------------------------------------------------------------------ through the SDK


@pytest.fixture(scope="module")
def client(module_stack_factory: StackFactory) -> openai.OpenAI:
    providers = {name: {"kind": "mock", "tokens": 2} for name in ("dear", "cheap", "bulk")}
    stack = module_stack_factory(providers, {
        "smart": {"deployments": [{"provider": "dear", "model": "big"}], "rules": [
            {"use": "smart-batch", "lanes": ["batch"]},
            {"use": "smart-economy", "header": {"X-Cost-Tier": "economy"}},
            {"use": "smart-economy", "max_prompt_tokens": 50, "tools": False, "images": False},
        ]},
        "smart-economy": [{"provider": "cheap", "model": "small", "capabilities": {"tools": False}}],
        "smart-batch": [{"provider": "bulk", "model": "b"}],
    }, tenants={"test": {"keys": [hash_key(TEST_KEY)], "models": ["smart"]}})
    return openai.OpenAI(base_url=stack.up(*providers), api_key=TEST_KEY, max_retries=0)


def ask(client: openai.OpenAI, content: Any = SHORT, *, headers: dict[str, str] | None = None,
        **fields: Any) -> tuple[str, str | None]:
    """Which deployment served the request, and the route that sent it there (if a rule did)."""
    raw = client.chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": content}], extra_headers=headers, **fields)
    assert raw.parse().model == "smart"  # the client sees the model it asked for
    return raw.headers["x-llm-broker-deployment"], raw.headers.get("x-llm-broker-route")


def test_a_short_prompt_without_tools_goes_to_the_economy_group(client: openai.OpenAI) -> None:
    assert ask(client) == ("cheap/small", "smart-economy")


def test_a_long_prompt_tools_or_images_stay_on_the_default_group(client: openai.OpenAI) -> None:
    assert ask(client, LONG) == ("dear/big", None)
    assert ask(client, tools=[TOOL]) == ("dear/big", None)
    assert ask(client, IMAGE) == ("dear/big", None)


def test_a_cost_tier_header_routes_whatever_the_prompt(client: openai.OpenAI) -> None:
    assert ask(client, LONG, headers={"X-Cost-Tier": "economy"}) == ("cheap/small", "smart-economy")
    assert ask(client, LONG, headers={"X-Cost-Tier": "premium"}) == ("dear/big", None)


def test_the_batch_lane_routes_before_the_later_rules(client: openai.OpenAI) -> None:
    assert ask(client, headers={"X-Priority": "batch"}) == ("bulk/b", "smart-batch")
    assert ask(client, headers={"X-Priority": "interactive"}) == ("cheap/small", "smart-economy")


def test_a_routed_stream_names_its_route_and_deployment(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": SHORT}], stream=True)
    chunks = list(raw.parse())
    assert chunks and all(c.model == "smart" for c in chunks)
    assert raw.headers["x-llm-broker-route"] == "smart-economy"
    assert raw.headers["x-llm-broker-deployment"] == "cheap/small"


def test_the_allow_list_applies_to_the_model_asked_for(client: openai.OpenAI) -> None:
    # The tenant may use `smart` only: its rules may send it to smart-economy, the tenant may not ask for it.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="smart-economy", messages=[{"role": "user", "content": SHORT}])
    assert [m.id for m in client.models.list()] == ["smart"]


def test_a_routed_request_its_target_cannot_serve_says_where_it_was_routed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smart", messages=[{"role": "user", "content": SHORT}], tools=[TOOL],
                                       extra_headers={"X-Cost-Tier": "economy"})
    assert "`smart` (routed to `smart-economy` by its rules) does not support tools" in info.value.message
