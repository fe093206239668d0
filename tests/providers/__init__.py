"""The providers of the conformance suite, one line each (as workers/providers/__init__.py registers adapters)."""

from __future__ import annotations

import pytest

from tests.providers.anthropic_case import AnthropicCase
from tests.providers.bedrock_case import BedrockCase
from tests.providers.azure_case import AzureCase, AzureV1Case
from tests.providers.case import ProviderCase, Scenario
from tests.providers.cohere_case import CohereCase
from tests.providers.gemini_case import GeminiCase
from tests.providers.openai_case import OpenAICase
from tests.providers.vertex_case import VertexClaudeCase, VertexGeminiCase

OPENAI, ANTHROPIC, GEMINI, BEDROCK, COHERE = OpenAICase(), AnthropicCase(), GeminiCase(), BedrockCase(), CohereCase()
VERTEX, VERTEX_CLAUDE = VertexGeminiCase(), VertexClaudeCase()
AZURE, AZURE_V1 = AzureCase(), AzureV1Case()
CASES: tuple[ProviderCase, ...] = (OPENAI, ANTHROPIC, GEMINI, AZURE, AZURE_V1, BEDROCK, VERTEX, VERTEX_CLAUDE, COHERE)


def scenario(name: Scenario) -> pytest.MarkDecorator:
    """Runs a test once for each provider that declares `name`, grouped by provider: one stack each."""
    cases = [case for case in CASES if name in case.scenarios]
    return pytest.mark.parametrize("provider", cases, ids=[case.name for case in cases], indirect=True, scope="package")
