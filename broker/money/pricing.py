"""Money: what a deployment's tokens cost, and what one request's usage came to.

A deployment's price, in USD per million tokens, is the first of:
1. its config (`input_per_mtok`, `output_per_mtok`, `cached_input_per_mtok`; cached input defaults
   to the input price);
2. the shipped table below, for well-known hosted models (dated: prices change); Vertex AI
   deployments look in Vertex's own table first; an Azure OpenAI
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

from collections.abc import Iterable
from typing import NamedTuple

import msgspec

from broker.config import (
    AzureProvider,
    BedrockProvider,
    Config,
    Deployment,
    MockProvider,
    OpenAIProvider,
    ProviderConfig,
    VertexProvider,
)
from broker.queue.jobs import Job
from broker.wire import Usage

# When the shipped table was copied from the providers' public price pages.
PRICES_TAKEN = "2025-06-01"
NANOS_PER_USD = 1_000_000_000
SELF_HOSTED_PROFILES = frozenset({"vllm", "ollama", "localai", "llamacpp"})


class Price(NamedTuple):
    """USD per million tokens, and per thousand searches (rerank models: Cohere prices them per search unit)."""

    input: float
    output: float
    cached_input: float
    per_1k_searches: float = 0.0

    def cost_nanos(self, usage: Usage) -> int:
        """The cost of `usage` in nano-dollars. Cached prompt tokens (counted inside prompt_tokens,
        as OpenAI reports them; the adapters translate the others to that) at the cached price."""
        cached = min(usage.prompt_detail("cached_tokens"), usage.prompt_tokens)
        micro_usd_x1000 = ((usage.prompt_tokens - cached) * self.input + cached * self.cached_input
                           + usage.completion_tokens * self.output)
        searches = usage.search_units if isinstance(usage.search_units, int) else 0
        # tokens x USD/Mtok = µUSD, x 1000 = nano-dollars; searches x USD/1k searches x 1e6 = nano-dollars
        return round(micro_usd_x1000 * 1000 + searches * self.per_1k_searches * 1_000_000)

    def estimate_nanos(self, prompt_tokens: int, output_tokens: int, search_units: int = 0) -> int:
        """What a request of that many prompt and output tokens (and searches) would cost, none of them cached."""
        return round((prompt_tokens * self.input + output_tokens * self.output) * 1000
                     + search_units * self.per_1k_searches * 1_000_000)


FREE = Price(0.0, 0.0, 0.0)


def _p(input: float, output: float, cached: float | None = None) -> Price:
    return Price(input, output, input if cached is None else cached)


def _searches(per_1k: float) -> Price:
    return Price(0.0, 0.0, 0.0, per_1k)


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
    # AWS Bedrock, on demand in us-east-1 (https://aws.amazon.com/bedrock/pricing/), by Bedrock's model ids;
    # a cross-region inference profile costs what its model costs in the source region (see `resolve`).
    "anthropic.claude-3-5-haiku": _p(0.80, 4.00, 0.08),
    "anthropic.claude-3-5-sonnet": _p(3.00, 15.00, 0.30),
    "anthropic.claude-3-7-sonnet": _p(3.00, 15.00, 0.30),
    "anthropic.claude-sonnet-4": _p(3.00, 15.00, 0.30),
    "anthropic.claude-3-haiku": _p(0.25, 1.25, 0.03),
    "amazon.nova-micro": _p(0.035, 0.14, 0.00875),
    "amazon.nova-lite": _p(0.06, 0.24, 0.015),
    "amazon.nova-pro": _p(0.80, 3.20, 0.20),
    "meta.llama3-1-8b-instruct": _p(0.22, 0.22),
    "meta.llama3-1-70b-instruct": _p(0.72, 0.72),
    "mistral.mistral-large-2402": _p(4.00, 12.00),
    "mistral.mistral-large-2407": _p(2.00, 6.00),
    "cohere.command-r-plus": _p(3.00, 15.00),
    "cohere.command-r": _p(0.50, 1.50),
    # Rerankers per 1,000 queries, a query being up to 100 documents: Cohere's search unit.
    "cohere.rerank-v3-5": _searches(2.00),
    "amazon.rerank-v1": _searches(1.00),
    # Cohere (https://cohere.com/pricing): chat and embed per token, rerank per 1,000 search units
    "command-a": _p(2.50, 10.00),
    "command-r-plus": _p(2.50, 10.00),
    "command-r": _p(0.15, 0.60),
    "command-r7b": _p(0.0375, 0.15),
    "embed-v4.0": _p(0.12, 0.0),
    "embed-english-v3.0": _p(0.10, 0.0),
    "embed-multilingual-v3.0": _p(0.10, 0.0),
    "embed-english-light-v3.0": _p(0.10, 0.0),
    "embed-multilingual-light-v3.0": _p(0.10, 0.0),
    "rerank-v3.5": _searches(2.00),
    "rerank-english-v3.0": _searches(2.00),
    "rerank-multilingual-v3.0": _searches(2.00),
}
# Bedrock's cross-region inference profiles: the model id behind a geography's prefix.
BEDROCK_PROFILE_PREFIXES = ("us.", "eu.", "apac.", "us-gov.", "jp.", "au.", "ca.", "global.")
# Google Vertex AI's own prices (https://cloud.google.com/vertex-ai/generative-ai/pricing), where a
# model is billed by Google rather than its maker; the `vertex` kind looks here first, then above.
# Gemini 2.0 Flash costs more on Vertex than on the Developer API; cached input is Vertex's context
# cache read price. Claude's are Anthropic's list prices, which Vertex charges on its global endpoint.
SHIPPED_VERTEX: dict[str, Price] = {
    "gemini-2.5-pro": _p(1.25, 10.00, 0.125),
    "gemini-2.5-flash": _p(0.30, 2.50, 0.03),
    "gemini-2.0-flash": _p(0.15, 0.60, 0.0375),
    "gemini-2.0-flash-lite": _p(0.075, 0.30),
    "claude-sonnet-4": _p(3.00, 15.00, 0.30),
    "claude-3-5-sonnet": _p(3.00, 15.00, 0.30),
    "claude-3-5-haiku": _p(0.80, 4.00, 0.08),
}


def shipped_price(model: str, table: dict[str, Price] = SHIPPED) -> Price | None:
    """The table's price for `model`: its exact id, or the longest stem it extends with a `-`, `@`
    or `:` (dated snapshots, `-latest`, Vertex's `claude-3-5-haiku@20241022`, Ollama-style tags); a
    vendor prefix (`openai/gpt-4o`) is skipped."""
    name = model.rsplit("/", 1)[-1].lower()
    # Longest stems first, so "gpt-4o-mini-2024-07-18" is gpt-4o-mini, not gpt-4o (sorted per call:
    # prices are resolved once per process, in PriceBook).
    for stem in sorted(table, key=len, reverse=True):
        if name == stem or (name.startswith(stem) and name[len(stem)] in "-@:"):
            return table[stem]
    return None


def resolve(deployment: Deployment, provider: ProviderConfig) -> Price | None:
    """The deployment's price, or None: unpriced (see the module docstring for the order)."""
    configured = (deployment.input_per_mtok, deployment.output_per_mtok, deployment.cached_input_per_mtok,
                  deployment.per_1k_searches)
    if any(value is not None for value in configured):
        given = deployment.input_per_mtok or 0.0
        cached = deployment.cached_input_per_mtok
        return Price(given, deployment.output_per_mtok or 0.0, given if cached is None else cached,
                     deployment.per_1k_searches or 0.0)
    if isinstance(provider, MockProvider) or (isinstance(provider, OpenAIProvider)
                                              and provider.profile in SELF_HOSTED_PROFILES):
        return FREE
    if isinstance(provider, AzureProvider):
        return shipped_price(provider.base_models.get(deployment.model, deployment.model))
    if isinstance(provider, BedrockProvider):
        # AWS charges nothing extra for a profile: "the price is calculated basis the region you made the
        # request in" (https://aws.amazon.com/bedrock/pricing/, cross-region inference).
        model = deployment.model.rsplit("/", 1)[-1]  # an inference profile's ARN ends with its id
        return shipped_price(next((model[len(p):] for p in BEDROCK_PROFILE_PREFIXES if model.startswith(p)), model))
    if isinstance(provider, VertexProvider):
        return shipped_price(deployment.model, SHIPPED_VERTEX) or shipped_price(deployment.model)
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


# ---- media endpoints: priced by their own units (images, audio minutes, characters), not tokens.
# From https://platform.openai.com/docs/pricing (taken PRICES_TAKEN). A deployment priced at zero
# (the mock, self-hosted servers: FREE above) is free for these too; a model in none of these tables
# is unpriced, as for tokens.

# USD per image by (quality, size); "*" matches any. DALL·E 3: standard/hd; GPT image: low/medium/high.
IMAGE_USD: dict[str, dict[tuple[str, str], float]] = {
    "dall-e-2": {("*", "256x256"): 0.016, ("*", "512x512"): 0.018, ("*", "1024x1024"): 0.020},
    "dall-e-3": {("standard", "1024x1024"): 0.040, ("standard", "*"): 0.080,
                 ("hd", "1024x1024"): 0.080, ("hd", "*"): 0.120},
    "gpt-image-1": {("low", "1024x1024"): 0.011, ("low", "*"): 0.016,
                    ("medium", "1024x1024"): 0.042, ("medium", "*"): 0.063,
                    ("high", "1024x1024"): 0.167, ("high", "*"): 0.250},
}
IMAGE_DEFAULTS = {"dall-e-2": ("standard", "1024x1024"), "dall-e-3": ("standard", "1024x1024"),
                  "gpt-image-1": ("high", "1024x1024")}  # `auto` is billed as what it usually picks
# GPT image models report tokens; when they do, these prices (USD per 1M: text in, image in, image out) apply.
IMAGE_TOKEN_USD = {"gpt-image-1": (5.00, 10.00, 40.00), "gpt-image-1-mini": (2.00, 2.50, 8.00)}
# USD per minute of audio transcribed or translated; per 1M tokens (audio in, text out) when reported.
TRANSCRIPTION_USD_PER_MIN = {"whisper-1": 0.006, "gpt-4o-transcribe": 0.006, "gpt-4o-mini-transcribe": 0.003}
TRANSCRIPTION_TOKEN_USD = {"gpt-4o-transcribe": (6.00, 10.00), "gpt-4o-mini-transcribe": (3.00, 5.00)}
# USD per 1M input characters (tts-1, tts-1-hd); gpt-4o-mini-tts is billed by tokens: $0.60 per 1M text
# tokens in (estimated at CHARS_PER_TOKEN) and $12 per 1M audio tokens out, which the audio stream does
# not report: that part is not charged (README, pricing notes).
SPEECH_USD_PER_MCHAR = {"tts-1": 15.00, "tts-1-hd": 30.00}
SPEECH_TOKEN_USD = {"gpt-4o-mini-tts": 0.60}


def media_stem(table: Iterable[str], model: str) -> str | None:
    name = model.rsplit("/", 1)[-1].lower()
    for stem in sorted(table, key=len, reverse=True):
        if name == stem or (name.startswith(stem) and name[len(stem)] in "-@:"):
            return stem
    return None


def _nanos(usd_amount: float) -> int:
    return round(usd_amount * NANOS_PER_USD)


def image_nanos(price: Price | None, model: str, *, images: int, quality: str | None, size: str | None,
                tokens: tuple[int, int, int] | None = None) -> int | None:
    """`images` images of `model` (tokens: text in, image in, image out, when the upstream reported them)."""
    if price == FREE:
        return 0
    if tokens is not None and (stem := media_stem(IMAGE_TOKEN_USD, model)) is not None:
        rates = IMAGE_TOKEN_USD[stem]
        return round(sum(n * rate for n, rate in zip(tokens, rates)) * 1000)
    stem = media_stem(IMAGE_USD, model)
    if stem is None:
        return None
    default_quality, default_size = IMAGE_DEFAULTS[stem]
    quality = default_quality if quality in (None, "auto") else quality
    size = default_size if size in (None, "auto") else size
    table = IMAGE_USD[stem]
    each = next((table[k] for k in ((quality, size), (quality, "*"), ("*", size)) if k in table), None)
    return None if each is None else _nanos(each * images)


def transcription_nanos(price: Price | None, model: str, *, seconds: float | None,
                        tokens: tuple[int, int] | None) -> int | None:
    if price == FREE:
        return 0
    if tokens is not None and (stem := media_stem(TRANSCRIPTION_TOKEN_USD, model)) is not None:
        audio_in, text_out = TRANSCRIPTION_TOKEN_USD[stem]
        return round((tokens[0] * audio_in + tokens[1] * text_out) * 1000)
    stem = media_stem(TRANSCRIPTION_USD_PER_MIN, model)
    if stem is None or seconds is None:
        return None
    return _nanos(TRANSCRIPTION_USD_PER_MIN[stem] * seconds / 60)


def speech_nanos(price: Price | None, model: str, *, characters: int) -> int | None:
    if price == FREE:
        return 0
    if (stem := media_stem(SPEECH_TOKEN_USD, model)) is not None:
        return round(-(-characters // CHARS_PER_TOKEN) * SPEECH_TOKEN_USD[stem] * 1000)
    stem = media_stem(SPEECH_USD_PER_MCHAR, model)
    return None if stem is None else round(characters * SPEECH_USD_PER_MCHAR[stem] * 1000)
