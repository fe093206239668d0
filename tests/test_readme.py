"""README's examples do what it says they do."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
