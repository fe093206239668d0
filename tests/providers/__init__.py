"""The providers of the conformance suite, one line each (as workers/providers/__init__.py registers adapters)."""

from __future__ import annotations

import pytest

from tests.providers.anthropic_case import AnthropicCase
from tests.providers.azure_case import AzureCase, AzureV1Case
from tests.providers.case import ProviderCase, Scenario
from tests.providers.gemini_case import GeminiCase
from tests.providers.openai_case import OpenAICase

OPENAI, ANTHROPIC, GEMINI = OpenAICase(), AnthropicCase(), GeminiCase()
AZURE, AZURE_V1 = AzureCase(), AzureV1Case()
CASES: tuple[ProviderCase, ...] = (OPENAI, ANTHROPIC, GEMINI, AZURE, AZURE_V1)


def scenario(name: Scenario) -> pytest.MarkDecorator:
    """Runs a test once for each provider that declares `name`, grouped by provider: one stack each."""
    cases = [case for case in CASES if name in case.scenarios]
    return pytest.mark.parametrize("provider", cases, ids=[case.name for case in cases], indirect=True, scope="package")
