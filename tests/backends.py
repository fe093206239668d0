"""One stack in front of every kind of backend, for the inbound protocols' tests (/v1/messages, /v1/responses).

Public models: `claude-direct` on the Anthropic fake, `gpt-translated` on the OpenAI-compatible fake,
`gemini-translated` on the Gemini fake, `mock-translated` on the mock; failing and failing-over ones
beside them; and three tenants: `test`, `tight` (1 request a minute) and `broke` ($1 a day, on a model
at a dollar a token). Each test module starts its own, with two API processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

from broker.config import hash_key
from tests.fakes.server import FakeServer
from tests.harness import TEST_KEY
from tests.providers import ANTHROPIC, GEMINI, OPENAI
from tests.stacks import Stack, StackFactory

MODELS = {"claude-direct": ANTHROPIC, "gpt-translated": OPENAI, "gemini-translated": GEMINI}
ALL = [*MODELS, "mock-translated"]
TIGHT_KEY, BROKE_KEY = "sk-tight-tenant-0001", "sk-broke-tenant-0001"
DOLLAR_A_TOKEN = {"input_per_mtok": 1_000_000.0, "output_per_mtok": 1_000_000.0}


@contextmanager
def upstreams() -> Iterator[dict[str, FakeServer]]:
    servers = {model: case.serve() for model, case in MODELS.items()}
    for server in servers.values():
        server.start()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def stack(make: StackFactory, servers: dict[str, FakeServer]) -> Stack:
    providers: dict[str, Any] = {"mock": {"kind": "mock"}, "idle": {"kind": "mock"}}  # idle: no worker runs
    models: dict[str, Any] = {"mock-translated": [{"provider": "mock", "model": "mock-chat"}]}
    for model, case in MODELS.items():
        providers[case.name] = {"kind": case.name, "base_url": case.base_url(servers[model]), "api_key": case.key}
        models[model] = [{"provider": case.name, "model": case.models["chat"]}]
    models["claude-limited"] = [{"provider": ANTHROPIC.name, "model": "rate-limited"}]
    models["claude-dies"] = [{"provider": ANTHROPIC.name, "model": "midstream-error"}]
    models["gpt-dies"] = [{"provider": OPENAI.name, "model": "midstream-error"}]
    models["gpt-slow"] = [{"provider": OPENAI.name, "model": "slow"}]  # answers after 30 s
    models["claude-broken"] = [{"provider": ANTHROPIC.name, "model": "server-error"}]
    models["nobody-home"] = [{"provider": "idle", "model": "m"}]
    models["gpt-small"] = [{"provider": OPENAI.name, "model": OPENAI.models["chat"] + "@small",
                            "capabilities": {"max_context_tokens": 40}}]
    # Failover before the first event, from a relayed deployment to a translated one and back.
    models["claude-then-gpt"] = [{"provider": ANTHROPIC.name, "model": "overloaded"},
                                 {"provider": OPENAI.name, "model": OPENAI.models["chat"]}]
    models["gpt-then-claude"] = [{"provider": OPENAI.name, "model": "fail-503"},
                                 {"provider": ANTHROPIC.name, "model": ANTHROPIC.models["chat"]}]
    models["priced"] = [{"provider": OPENAI.name, "model": OPENAI.models["chat"] + "@priced", **DOLLAR_A_TOKEN}]
    tenants = {"test": {"keys": [hash_key(TEST_KEY)]},
               "tight": {"keys": [hash_key(TIGHT_KEY)], "rpm": 1},
               "broke": {"keys": [hash_key(BROKE_KEY)], "daily_budget_usd": 1}}
    running = make(providers, models, tenants=tenants)
    running.up("mock", *(case.name for case in MODELS.values()), apis=(1, 1))
    return running


def chat_text(base_url: str, model: str, prompt: str, **options: Any) -> str:
    """What the same model answers the same prompt on /v1/chat/completions: the upstreams (and the
    mock) answer deterministically, so a faithful translation gives the same text."""
    chat = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    reply = chat.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **options)
    return reply.choices[0].message.content or ""
