"""Routing by request shape (config: a model group's `rules:`): send what a cheaper model can
answer to it, and the rest to the model the client asked for.

Rules are tried in order; the first whose every condition holds names the model whose group then
serves the request (its deployments, strategy, fallbacks, hedging). The client still sees the name
it asked for; `x-llm-broker-route` says which model's group a rule chose. The target is the
operator's choice, so the tenant's model list applies to the model asked for, not to the target.

Evaluated on the decoded request only: no Redis, and nothing at all for models without rules.
"""

from __future__ import annotations

from collections.abc import Mapping

from broker.capabilities import Request, estimate_tokens, needs
from broker.config import ModelGroup, Rule


def matches(rule: Rule, req: Request, lane: str, headers: Mapping[str, str]) -> bool:
    required = needs(req)
    if rule.max_prompt_tokens is not None and estimate_tokens(req) > rule.max_prompt_tokens:
        return False
    if rule.tools is not None and ("tools" in required) != rule.tools:
        return False
    if rule.images is not None and ("vision" in required) != rule.images:
        return False
    if rule.lanes is not None and lane not in rule.lanes:
        return False
    # Header names are case-insensitive (Starlette's Headers lowercase them; so do we).
    return all(headers.get(name.lower()) == value for name, value in (rule.header or {}).items())


def route(group: ModelGroup, req: Request, lane: str, headers: Mapping[str, str]) -> str | None:
    """The model a rule sends this request to, or None: the group itself serves it."""
    return next((rule.use for rule in group.rules if matches(rule, req, lane, headers)), None)
