"""Money: what a deployment's tokens cost, and what one request's usage came to.

A deployment's price, in USD per million tokens, is the first of:
1. its config (`input_per_mtok`, `output_per_mtok`, `cached_input_per_mtok`; cached input defaults
   to the input price);
2. the shipped table below, for well-known hosted models (dated: prices change); an Azure OpenAI
   deployment by the model it runs (`base_models`, else its name), at OpenAI's prices, which are
   Azure's Global Standard prices (Data Zone and Regional deployments cost more: price them in config);
3. zero for self-hosted servers (the `mock` kind, and OpenAI-compatible providers whose profile
   is a self-hosted server: vLLM, Ollama, LocalAI, llama.cpp);
4. none: the deployment is *unpriced*, which is reported as such, never as free.

Costs are summed in integer nano-dollars (1e-9 USD) wherever they add up (the ledger, budgets):
float sums drift, and a tenant's spend must match the sum of its answers to the cent. Answers
carry the same figure in USD (`usage.cost`, OpenRouter's field).
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from broker.config import (
    AzureProvider,
    Config,
    Deployment,
    MockProvider,
    OpenAIProvider,
    ProviderConfig,
)
from broker.queue.jobs import Job
from broker.wire import Usage

# When the shipped table was copied from the providers' public price pages.
PRICES_TAKEN = "2025-06-01"
NANOS_PER_USD = 1_000_000_000
SELF_HOSTED_PROFILES = frozenset({"vllm", "ollama", "localai", "llamacpp"})


class Price(NamedTuple):
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float

    def cost_nanos(self, usage: Usage) -> int:
        """The cost of `usage` in nano-dollars. Cached prompt tokens (counted inside prompt_tokens,
        as OpenAI reports them; the adapters translate the others to that) at the cached price."""
        cached = min(usage.prompt_detail("cached_tokens"), usage.prompt_tokens)
        micro_usd_x1000 = ((usage.prompt_tokens - cached) * self.input + cached * self.cached_input
                           + usage.completion_tokens * self.output)
        return round(micro_usd_x1000 * 1000)  # tokens x USD/Mtok = µUSD; x 1000 = nano-dollars

    def estimate_nanos(self, prompt_tokens: int, output_tokens: int) -> int:
        """What a request of that many prompt and output tokens would cost, none of them cached."""
        return round((prompt_tokens * self.input + output_tokens * self.output) * 1000)


FREE = Price(0.0, 0.0, 0.0)


def _p(input: float, output: float, cached: float | None = None) -> Price:
    return Price(input, output, input if cached is None else cached)


# Model id (or the stem of dated and suffixed ids: "gpt-4o-2024-08-06" is "gpt-4o") → price.
SHIPPED: dict[str, Price] = {
    # OpenAI
    "gpt-4o": _p(2.50, 10.00, 1.25),
    "gpt-4o-mini": _p(0.15, 0.60, 0.075),
    "gpt-4.1": _p(2.00, 8.00, 0.50),
    "gpt-4.1-mini": _p(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _p(0.10, 0.40, 0.025),
    "gpt-4-turbo": _p(10.00, 30.00),
    "gpt-3.5-turbo": _p(0.50, 1.50),
    "o1": _p(15.00, 60.00, 7.50),
    "o1-mini": _p(1.10, 4.40, 0.55),
    "o3": _p(2.00, 8.00, 0.50),
    "o3-mini": _p(1.10, 4.40, 0.55),
    "o4-mini": _p(1.10, 4.40, 0.275),
    "text-embedding-3-small": _p(0.02, 0.0),
    "text-embedding-3-large": _p(0.13, 0.0),
    "text-embedding-ada-002": _p(0.10, 0.0),
    # Anthropic (cached: cache reads)
    "claude-opus-4": _p(15.00, 75.00, 1.50),
    "claude-sonnet-4": _p(3.00, 15.00, 0.30),
    "claude-3-7-sonnet": _p(3.00, 15.00, 0.30),
    "claude-3-5-sonnet": _p(3.00, 15.00, 0.30),
    "claude-3-5-haiku": _p(0.80, 4.00, 0.08),
    "claude-3-haiku": _p(0.25, 1.25, 0.03),
    "claude-3-opus": _p(15.00, 75.00, 1.50),
    # Google (prompts up to 200k tokens)
    "gemini-2.5-pro": _p(1.25, 10.00, 0.31),
    "gemini-2.5-flash": _p(0.30, 2.50, 0.075),
    "gemini-2.0-flash": _p(0.10, 0.40, 0.025),
    "gemini-2.0-flash-lite": _p(0.075, 0.30),
    "gemini-1.5-pro": _p(1.25, 5.00, 0.3125),
    "gemini-1.5-flash": _p(0.075, 0.30, 0.01875),
    # Mistral
    "mistral-large": _p(2.00, 6.00),
    "mistral-medium": _p(0.40, 2.00),
    "mistral-small": _p(0.10, 0.30),
    "codestral": _p(0.30, 0.90),
    # DeepSeek (cached: cache hits)
    "deepseek-chat": _p(0.27, 1.10, 0.07),
    "deepseek-reasoner": _p(0.55, 2.19, 0.14),
}
# Longest stems first, so "gpt-4o-mini-2024-07-18" is gpt-4o-mini, not gpt-4o.
_STEMS = sorted(SHIPPED, key=len, reverse=True)


def shipped_price(model: str) -> Price | None:
    """The table's price for `model`: its exact id, or the longest stem it extends with a `-`, `@`
    or `:` (dated snapshots, `-latest`, Ollama-style tags); a vendor prefix (`openai/gpt-4o`) is skipped."""
    name = model.rsplit("/", 1)[-1].lower()
    for stem in _STEMS:
        if name == stem or (name.startswith(stem) and name[len(stem)] in "-@:"):
            return SHIPPED[stem]
    return None


def resolve(deployment: Deployment, provider: ProviderConfig) -> Price | None:
    """The deployment's price, or None: unpriced (see the module docstring for the order)."""
    configured = (deployment.input_per_mtok, deployment.output_per_mtok, deployment.cached_input_per_mtok)
    if any(value is not None for value in configured):
        given = deployment.input_per_mtok or 0.0
        cached = deployment.cached_input_per_mtok
        return Price(given, deployment.output_per_mtok or 0.0, given if cached is None else cached)
    if isinstance(provider, MockProvider) or (isinstance(provider, OpenAIProvider)
                                              and provider.profile in SELF_HOSTED_PROFILES):
        return FREE
    if isinstance(provider, AzureProvider):
        return shipped_price(provider.base_models.get(deployment.model, deployment.model))
    return shipped_price(deployment.model)


class PriceBook:
    """Every deployment's price, resolved once per process from the config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._prices: dict[tuple[str, str], Price | None] = {}
        for name in config.models:
            group = config.group(name)
            for d in group.deployments if group else []:
                self._prices.setdefault((d.provider, d.model), resolve(d, config.providers[d.provider]))

    def price(self, provider: str, model: str) -> Price | None:
        """Also for `provider/model` passthrough deployments, which are in no group."""
        key = (provider, model)
        if key not in self._prices and provider in self.config.providers:
            self._prices[key] = resolve(Deployment(provider=provider, model=model), self.config.providers[provider])
        return self._prices.get(key)

    def of(self, job: Job) -> list[Price | None]:
        """The prices of every deployment `job` may run on: its own, then its failover candidates."""
        return [self.price(job.provider, job.upstream_model), *(self.price(t.provider, t.model) for t in job.fallbacks)]

    def unpriced(self) -> list[str]:
        """Configured deployments with no known price (`check-config` warns about them)."""
        return [f"{provider}/{model}" for (provider, model), price in self._prices.items() if price is None]


class Charge(msgspec.Struct, array_like=True, frozen=True):
    """What one job is charged, as the worker's finish records it in the ledger (broker/money/ledger.py)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_nanos: int | None = None  # None: the deployment is unpriced
    estimated: bool = False  # counted by the broker: the provider reported no usage for it


# Characters per token when the broker must count a stream's output itself (OpenAI's rule of thumb).
CHARS_PER_TOKEN = 4


def charge(price: Price | None, usage: Usage | None, *, prompt_estimate: int, output_chars: int,
           answered: bool) -> Charge:
    """The job's charge: from the provider's usage when it reported one; else, if anything was asked
    of the upstream and answered (`answered`: the upstream began answering, or the call succeeded), counted from
    what was sent and received, and flagged estimated. A call that failed before any output costs nothing."""
    if usage is None:
        if not answered and not output_chars:
            return Charge(cost_nanos=0 if price is not None else None)
        output = -(-output_chars // CHARS_PER_TOKEN)
        usage = Usage(prompt_estimate, output, prompt_estimate + output)
        estimated = True
    else:
        estimated = False
    cached = min(usage.prompt_detail("cached_tokens"), usage.prompt_tokens)
    return Charge(usage.prompt_tokens, usage.completion_tokens, cached,
                  None if price is None else price.cost_nanos(usage), estimated)


def usd(nanos: int) -> float:
    return nanos / NANOS_PER_USD
