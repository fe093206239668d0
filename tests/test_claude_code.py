"""Claude Code itself (`claude -p`) through the broker: against `llm-broker dev`'s mock, and against a
config that maps Claude Code's model names to an OpenAI-compatible deployment.

The CLI is pinned in tests/claude_code/package-lock.json; .ci/run installs it with `npm ci`
(or: `npm ci --prefix tests/claude_code`). It talks only to ANTHROPIC_BASE_URL here: its
non-essential traffic is off, and its home is a temp dir, so nothing of the machine's leaks in.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from broker.config import hash_key
from tests.fakes.server import FakeServer
from tests.harness import TEST_KEY
from tests.stacks import StackFactory
from tests.test_dev_command import dev
from workers.providers.mock import VOCABULARY

CLAUDE = Path(__file__).parent / "claude_code" / "node_modules" / ".bin" / "claude"


def _installed() -> bool:
    try:
        return subprocess.run([CLAUDE, "--version"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


pytestmark = [pytest.mark.skipif(not _installed(), reason="Claude Code not installed: npm ci --prefix tests/claude_code"),
              pytest.mark.upstream(chunks=5)]


def claude(tmp_path: Path, base_url: str, prompt: str, **env: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environment = {"PATH": os.environ["PATH"], "HOME": str(home), "ANTHROPIC_BASE_URL": base_url,
                   "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", **env}
    return subprocess.run([CLAUDE, "-p", prompt], capture_output=True, text=True, timeout=120, cwd=home,
                          env=environment)


def test_claude_code_answers_a_one_shot_prompt_through_llm_broker_dev(tmp_path: Path) -> None:
    with dev(tmp_path, os.environ["PATH"]) as running:
        done = claude(tmp_path, running.base_url.removesuffix("/v1"), "Say hello", ANTHROPIC_AUTH_TOKEN="sk-dev",
                      ANTHROPIC_MODEL="mock-chat", ANTHROPIC_DEFAULT_HAIKU_MODEL="mock-chat")
    assert done.returncode == 0, done.stdout + done.stderr
    words = done.stdout.split()
    assert words and set(words) <= set(VOCABULARY), done.stdout  # the mock's answer, as Claude Code printed it


def test_claude_code_on_an_openai_compatible_model_its_names_mapped_in_config(
        tmp_path: Path, stack_factory: StackFactory, upstream: FakeServer) -> None:
    local = [{"provider": "local", "model": "fake-model"}]
    stack = stack_factory({"local": {"kind": "openai", "base_url": upstream.base_url, "api_key": "sk-upstream"}},
                          {"claude-sonnet-4-5": local, "claude-haiku-4-5": local},
                          tenants={"test": {"keys": [hash_key(TEST_KEY)]}})
    base_url = stack.up("local")
    done = claude(tmp_path, base_url.removesuffix("/v1"), "Say hello", ANTHROPIC_API_KEY=TEST_KEY,
                  ANTHROPIC_MODEL="claude-sonnet-4-5", ANTHROPIC_DEFAULT_HAIKU_MODEL="claude-haiku-4-5",
                  CLAUDE_CODE_DISABLE_EXPERIMENTAL_BETAS="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "tok0 tok1 tok2 tok3 tok4"  # the fake upstream's answer
    asked = [r for r in upstream.requests if r.body and r.body.get("model") == "fake-model"]
    assert any("Say hello" in str(message.get("content")) for r in asked for message in r.body["messages"])
