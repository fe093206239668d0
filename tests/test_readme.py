"""README's examples do what it says they do."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bench.overload import served_rate
from broker.config import hash_key
from tests.stacks import StackFactory

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_sdk_snippet_prints_each_result_on_its_own_line(stack_factory: StackFactory) -> None:
    section = README.read_text().split("## Use it from the OpenAI SDK", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S)
    assert snippet
    # The default dev config's models and key, on a stack of the test's own.
    stack = stack_factory({"mock": {"kind": "mock"}, "mock-slow": {"kind": "mock", "token_delay_s": 0.005}},
                          {"mock-chat": [{"provider": "mock", "model": "mock-chat"}],
                           "mock-chat-slow": [{"provider": "mock-slow", "model": "mock-chat-slow"}]},
                          tenants={"dev": {"keys": [hash_key("sk-dev")]}})
    code = snippet.group(1).replace("http://127.0.0.1:8080/v1", stack.up("mock", "mock-slow"))
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           timeout=60).stdout.splitlines()
    assert len(lines) == 3, lines  # the answer, the streamed answer, the model list
    assert len(lines[0].split()) == len(lines[1].split()) == 16
    assert lines[2] == "['mock-chat', 'mock-chat-slow']"


def test_overload_counts_answers_over_the_time_they_took_not_the_offering_window() -> None:
    # Offered for 1 s (the last request at 0.99 s), each answer 0.5 s long: 100 answers in 1.49 s, not 1 s.
    results = [("t", "default", 200, 0.5, i / 100) for i in range(100)] + [("t", "default", 429, 0.01, 0.5)]
    answered, span_s = served_rate(results)
    assert answered == 100 and span_s == pytest.approx(1.49)


def test_the_readme_lists_every_redis_key_as_broker_keys_does() -> None:
    import broker.keys

    def rows(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.startswith("| {ns}")]

    readme = README.read_text()
    section = readme[readme.index("<!-- keys-table -->"):readme.index("<!-- /keys-table -->")]
    assert rows(section) == rows(broker.keys.__doc__ or "") and rows(section)


# The endpoint table's columns: the capability routing checks, and the adapter method that serves it.
_COLUMNS = (("chat", "complete"), ("completions", "complete_text"), ("embeddings", "embed"), ("rerank", "rerank"),
            ("images", "generate_images"), ("moderations", "moderate"), ("transcriptions", "transcribe"),
            ("speech", "speak"))


def _expected_rows() -> dict[str, list[str]]:
    """Each kind's (and profile's) row, from its settings' `capabilities()` and its adapter's methods."""
    from broker.config.providers import (
        AnthropicProvider,
        AzureProvider,
        BedrockProvider,
        CohereProvider,
        GeminiProvider,
        MockProvider,
        OpenAIProvider,
        VertexProvider,
    )
    from broker.routing.profiles import PROFILES
    from workers.providers import REGISTRY
    from workers.providers.vertex import VertexClaude, VertexGemini

    def row(settings: Any, adapter: type) -> list[str]:
        caps = settings.capabilities()
        cells = ["yes" if getattr(caps, flag) else "if marked" if hasattr(adapter, method) else "no"
                 for flag, method in _COLUMNS]
        responses = "yes" if caps.responses_api else "with `responses_api: true`" \
            if hasattr(adapter, "relay_responses") else "no"
        return [*cells, responses, "yes" if hasattr(adapter, "relay_messages") else "no"]

    rows = {f"`openai` / `{name}`": row(OpenAIProvider(base_url="http://x", profile=name), REGISTRY["openai"])
            for name in PROFILES if name != "azure"}  # `azure`: the azure kind's own (its row below)
    rows["`azure`"] = row(msgspec.convert({"endpoint": "http://x", "api_key": "k"}, AzureProvider,
                                          dec_hook=_secret), REGISTRY["azure"])
    rows["`anthropic`"] = row(AnthropicProvider(), REGISTRY["anthropic"])
    rows["`gemini`"] = row(GeminiProvider(), REGISTRY["gemini"])
    rows["`bedrock`"] = row(BedrockProvider(region="us-east-1"), REGISTRY["bedrock"])
    rows["`vertex` / `google`"] = row(VertexProvider(project="p", publisher="google"), VertexGemini)
    rows["`vertex` / `anthropic`"] = row(VertexProvider(project="p", publisher="anthropic"), VertexClaude)
    rows["`cohere`"] = row(CohereProvider(), REGISTRY["cohere"])
    rows["`mock`"] = row(MockProvider(), REGISTRY["mock"])
    return rows


def _secret(typ: type, value: Any) -> Any:
    from broker.config import Secret
    return Secret(value) if typ is Secret else value


def test_the_endpoint_table_says_what_each_kinds_capabilities_and_adapter_do() -> None:
    table = README.read_text().split("<!-- endpoint-table -->", 1)[1].split("<!-- /endpoint-table -->", 1)[0]
    lines = [line for line in table.strip().splitlines()[2:]]  # past the header and its rule
    written = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}
    expected = _expected_rows()
    assert set(written) == set(expected)  # a row per kind and profile, none invented
    for kind, cells in expected.items():
        assert written[kind] == cells, kind
