"""Route by request shape: a public model's `rules:` send the requests they match to another model's group.

Rules are the operator's cost policy: short prompts without tools, the batch lane, or clients
that send `X-Cost-Tier: economy` go to a cheaper group; everything else stays on the model's
own. They are tried in order and the first whose conditions all hold wins. A rule reads only
the request, its lane and its headers, never Redis, and a model without rules never gets here.

A rule's target may not have rules of its own: routing takes one step, so it cannot loop and
a response is explained by one name (`x-llm-broker-route`). The client still sees the model it
asked for, in the answer's `model` and in its usage records.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Annotated

import msgspec

from broker.config.types import Strict
from broker.keys import LANES
from broker.routing.capabilities import Request, estimate_tokens, needs
from broker.wire import ChatRequest


class Rule(Strict, kw_only=True):
    """`use` serves the requests for which every condition set here holds (at least one must be)."""

    use: str  # another public model: its deployments, strategy, fallbacks and hedging serve the request
    max_prompt_tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None  # as estimated for context checks
    tools: bool | None = None  # false: neither `tools` nor legacy `functions`
    images: bool | None = None  # false: no image inputs
    lanes: list[str] | None = None  # the request's lane (X-Priority, else the tenant's) is one of these
    header: dict[str, str] | None = None  # request header → the value it must equal

    def __post_init__(self) -> None:
        # HTTP header names are case-insensitive and ASGI hands them over in lower case.
        if self.header:
            self.header = {name.lower(): value for name, value in self.header.items()}

    def matches(self, facts: Facts, lane: str, headers: Mapping[str, str]) -> bool:
        # The cheapest conditions first: the request's own facts are only worked out if still needed.
        return ((self.lanes is None or lane in self.lanes)
                and (self.header is None or all(headers.get(k) == v for k, v in self.header.items()))
                and (self.tools is None or facts.tools == self.tools)
                and (self.images is None or facts.images == self.images)
                and (self.max_prompt_tokens is None or facts.prompt_tokens <= self.max_prompt_tokens))


CONDITIONS = ("max_prompt_tokens", "tools", "images", "lanes", "header")


class Facts:
    """What rules ask of a request, each worked out once and only when a rule asks."""

    def __init__(self, req: Request) -> None:
        self.req = req

    @cached_property
    def prompt_tokens(self) -> int:
        return estimate_tokens(self.req)

    @cached_property
    def tools(self) -> bool:
        # Legacy `functions` travel in extra_body; they are tools to a model that cannot call any.
        extra = self.req.extra_body if isinstance(self.req, ChatRequest) else None
        return "tools" in needs(self.req) or (isinstance(extra, dict) and bool(extra.get("functions")))

    @cached_property
    def images(self) -> bool:
        return "vision" in needs(self.req)


def first_match(rules: list[Rule], req: Request, *, lane: str, headers: Mapping[str, str]) -> Rule | None:
    """The first rule `req` satisfies. `headers` are looked up by lower-case name, as ASGI gives them."""
    facts = Facts(req)
    return next((rule for rule in rules if rule.matches(facts, lane, headers)), None)


def check(rules_of: Mapping[str, list[Rule]]) -> str | None:
    """The first mistake in the models' rules, with its path, or None. `rules_of` holds every model."""
    for model, rules in rules_of.items():
        for i, rule in enumerate(rules):
            at = f"$.models.{model}.rules[{i}]"
            if rule.use == model or rule.use not in rules_of:
                return f"`use` names another configured model; {rule.use!r} is not one - at `{at}.use`"
            if rules_of[rule.use]:
                return (f"{rule.use!r} has rules of its own; a rule's target may not (routing takes one step)"
                        f" - at `{at}.use`")
            if all(getattr(rule, condition) is None for condition in CONDITIONS):
                return f"a rule needs at least one condition ({', '.join(CONDITIONS)}) - at `{at}`"
            if rule.lanes is not None and (not rule.lanes or not set(rule.lanes) <= set(LANES)):
                return f"lanes are one or more of {', '.join(LANES)} - at `{at}.lanes`"
            if rule.header is not None and not rule.header:
                return f"header names at least one header and its value - at `{at}.header`"
    return None
