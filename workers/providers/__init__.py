"""Provider registry: config `kind` → adapter class. A new provider is one module and one line here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from broker.config import ProviderConfig
from workers.providers.anthropic import AnthropicMessages
from workers.providers.azure import AzureOpenAI
from workers.providers.base import EmbeddingsProvider, Provider, RerankProvider, TextCompletionProvider
from workers.providers.bedrock import BedrockConverse
from workers.providers.cohere import CohereV2
from workers.providers.gemini import GeminiGenerateContent
from workers.providers.mock import MockProvider
from workers.providers.openai import OpenAICompatible
from workers.providers.vertex import vertex

REGISTRY: dict[str, Callable[[str, Any], Provider]] = {
    "openai": OpenAICompatible,
    "azure": AzureOpenAI,
    "mock": MockProvider,
    "gemini": GeminiGenerateContent,
    "anthropic": AnthropicMessages,
    "bedrock": BedrockConverse,
    "vertex": vertex,
    "cohere": CohereV2,
}


def build_provider(name: str, config: ProviderConfig, *, concurrency: int | None = None) -> Provider:
    """`concurrency`: the jobs the worker really runs at once, when it differs from the config's
    (`llm-broker worker --concurrency`). Adapters size their connection pool by it: a smaller pool
    would hold the extra jobs waiting for a connection until their connect timeout."""
    if concurrency is not None and concurrency != config.concurrency:
        config = msgspec.structs.replace(config, concurrency=concurrency)
    kind = type(config).__struct_config__.tag
    return REGISTRY[str(kind)](name, config)


__all__ = ["REGISTRY", "EmbeddingsProvider", "Provider", "RerankProvider", "TextCompletionProvider",
           "build_provider"]
