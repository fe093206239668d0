"""Public model name → the deployments that may serve it, in order, and who may ask for it.

A public model is a group of deployments; those that have every capability
the request needs (broker/routing/capabilities.py) and a large enough context window
are its candidates, in the group's order: the first serves the request, the
others take it over if it fails there (broker/routing/failover.py). The roadmap's
strategies (weighted, cheapest, least-busy) reorder candidates here without
touching the API or the workers.

A model's `rules:` (broker/routing/rules.py) may put another model's group in the place
of its own for a request; the tenant's allow-list applies to the model the
client asked for, since where its rules send a request is the operator's choice.

`provider/model-id` reaches a configured provider's model directly when the
tenant has `passthrough: true` (a configured public name always wins).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from broker.config import Config, Deployment, ModelGroup, Tenant
from broker.errors import InvalidRequest, ModelNotFound
from broker.money.pricing import PriceBook
from broker.routing import rules, strategies
from broker.routing.capabilities import Capabilities, Request, estimate_tokens, needs
from broker.routing.strategies import Stats

_WHAT = {
    "chat": "chat completions",
    "completions": "the legacy completions endpoint (/v1/completions)",
    "embeddings": "embeddings",
    "tools": "tools (function calling)",
    "vision": "image inputs",
    "image_urls": "images by URL (send the image inline, as a data: URL)",
    "json_object": "JSON mode (response_format json_object)",
    "json_schema": "structured outputs (response_format json_schema)",
    "responses_api": "what only a Responses API upstream runs (built-in tools, OpenAI's own items)",
    "images": "image generation (/v1/images/generations)",
    "moderations": "moderations (/v1/moderations)",
    "transcriptions": "audio transcriptions and translations (/v1/audio/transcriptions, /v1/audio/translations)",
    "speech": "text to speech (/v1/audio/speech)",
    "rerank": "reranking (/v1/rerank)",
}


class Route(NamedTuple):
    """The group that serves a request for a public model."""

    group: ModelGroup
    via: str | None = None  # the model named by the rule that matched; None: the model's own group


class Router:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._provider_caps = {name: p.capabilities() for name, p in config.providers.items()}
        self.prices = PriceBook(config)
        self._native: dict[str, bool] = {}

    def capabilities(self, deployment: Deployment) -> Capabilities:
        return deployment.capabilities.apply(self._provider_caps[deployment.provider])

    def speaks_responses(self, tenant: Tenant, model: str) -> bool:
        """Whether any deployment that could serve `model` (its own, its fallbacks', its rules' targets')
        serves the Responses API itself: only then is a request's native form worth building."""
        if model not in self._native:
            group = self.group(tenant, model)
            names = [*group.fallbacks, *(rule.use for rule in group.rules)]
            groups = [group, *(g for name in names if (g := self.config.group(name)) is not None)]
            native = any(self.capabilities(d).responses_api for g in groups for d in g.deployments)
            if model not in self.config.models:  # a passthrough name: not worth remembering
                return native
            self._native[model] = native
        return self._native[model]

    def visible_models(self, tenant: Tenant) -> list[str]:
        """The public models this tenant may use."""
        names = tenant.models or list(self.config.models)
        return [n for n in names if n in self.config.models]

    def group(self, tenant: Tenant, model: str, *, param: str = "model") -> ModelGroup:
        """`model` as this tenant may use it: configured, or `provider/model-id` with passthrough."""
        group = self.config.group(model)
        if group is not None and (not tenant.models or model in tenant.models):
            return group
        provider, _, upstream_model = model.partition("/")
        if tenant.passthrough and upstream_model and provider in self.config.providers:
            return ModelGroup(deployments=[Deployment(provider=provider, model=upstream_model)])
        # OpenAI answers 404 for models that exist but are not yours, too: no probing.
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param=param)

    def route(self, tenant: Tenant, model: str, req: Request, *, lane: str, headers: Mapping[str, str]) -> Route:
        """`model`'s group for `req` (404 unless this tenant may use `model`): the target of its first
        rule that `req` matches in its `lane` with its `headers` (lower-case names), else its own."""
        group = self.group(tenant, model)
        if not group.rules:
            return Route(group)
        rule = rules.first_match(group.rules, req, lane=lane, headers=headers)
        if rule is None:
            return Route(group)
        target = self.config.group(rule.use)
        assert target is not None, "a rule's target is a configured model (checked at load)"
        return Route(target, rule.use)

    def resolve(self, tenant: Tenant, model: str) -> Deployment:
        """The deployment listed first for `model` (404 unless this tenant may use it)."""
        return self.group(tenant, model).deployments[0]

    def candidates(self, tenant: Tenant, model: str, req: Request, *, route: Route | None = None,
                   also: list[str] | None = None, stats: Stats | None = None,
                   requires: Mapping[str, str] | None = None) -> list[Deployment]:
        """Every deployment that can serve `req`, in failover order: `model`'s own, or its `route`'s
        (ordered by the group's strategy, with the `stats` it compares: broker/routing/strategies.py), then
        that group's `fallbacks`, then the models in `also` (the client's own fallback list,
        OpenRouter's `models`). `requires`: capabilities the request needs beyond what it shows (capability →
        the field that needs it). 400 if none can."""
        groups = [route.group if route is not None else self.group(tenant, model)]
        groups += [fallback for name in groups[0].fallbacks
                   if (fallback := self.config.group(name)) is not None and (not tenant.models or name in tenant.models)]
        groups += [self.group(tenant, name, param=f"models[{i}]") for i, name in enumerate(also or [])]
        required = needs(req) | dict(requires or {})
        lacking: str | None = None
        too_long: int | None = None
        capable: list[Deployment] = []
        for deployment in (d for group in groups for d in strategies.order(group, req, stats or {}, self.prices)):
            caps = self.capabilities(deployment)
            missing = [c for c in required if not getattr(caps, c)]
            if missing:
                lacking = lacking or missing[0]
                continue
            if caps.max_context_tokens is not None and estimate_tokens(req) > caps.max_context_tokens:
                too_long = caps.max_context_tokens
                continue
            if deployment not in capable:
                capable.append(deployment)
        if capable:
            return capable
        if lacking is not None:
            routed = f" (routed to `{route.via}` by its rules)" if route is not None and route.via else ""
            raise InvalidRequest(f"The model `{model}`{routed} does not support {_WHAT[lacking]}.",
                                 param=required[lacking], code="unsupported_capability")
        raise InvalidRequest(
            f"This model's maximum context length is {too_long} tokens; your request is longer.",
            param="messages", code="context_length_exceeded",
        )

