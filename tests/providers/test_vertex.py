"""Claude on Vertex AI spoken natively: /v1/messages relayed to rawPredict, and images as Vertex takes them.

Through the official `anthropic` SDK → broker API → worker → the Vertex fake over real HTTP. The
relay rewrites only what Vertex needs (no `model`, an `anthropic_version` in the body); every other
byte goes up as the client sent it, so thinking signatures pass the next turn. What the chat
scenarios see of Claude on Vertex is the conformance suite's (vertex_case.py).
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.anthropic_rules import sign
from tests.fakes.server import FakeServer
from tests.fakes.vertex_upstream import VERTEX_VERSION
from tests.harness import TEST_KEY
from tests.providers import VERTEX_CLAUDE
from tests.providers.case import last, text_of
from tests.providers.vertex_case import MODELS

pytestmark = pytest.mark.parametrize("provider", [VERTEX_CLAUDE], ids=["vertex-claude"], indirect=True,
                                     scope="package")
CLAUDE = VERTEX_CLAUDE.models["chat"]
AT = f"{MODELS}/anthropic/models"
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
       "AAAABJRU5ErkJggg==")


@pytest.fixture
def claude(base_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key=TEST_KEY, max_retries=0)


def test_a_message_is_relayed_to_raw_predict_with_the_model_in_the_path(base_url: str, upstream: FakeServer) -> None:
    body = {"max_tokens": 32, "model": "chat",
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "caf\u00e9 \u2615"}]}
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json",
               "anthropic-beta": "interleaved-thinking-2025-05-14"}
    answer = httpx.post(f"{base_url}/messages", content=json.dumps(body, ensure_ascii=False).encode(),
                        headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "chat" and answer.json()["content"][0]["text"] == "You said: caf\u00e9 \u2615"
    sent = last(upstream)
    assert sent.path == f"{AT}/{CLAUDE}:rawPredict"
    assert sent.headers["anthropic-beta"] == headers["anthropic-beta"]  # beta flags travel as on api.anthropic.com
    assert sent.headers["authorization"].startswith("Bearer ya29.") and "x-api-key" not in sent.headers
    assert sent.body == {**{k: v for k, v in body.items() if k != "model"}, "anthropic_version": VERTEX_VERSION}


def test_thinking_streams_from_stream_raw_predict_and_its_signature_passes_the_next_turn(
    claude: anthropic.Anthropic, upstream: FakeServer
) -> None:
    turns: list[Any] = [{"role": "user", "content": "think about Paris"}]
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    with claude.messages.stream(model="chat", max_tokens=2048, thinking=thinking, messages=turns) as stream:
        first = stream.get_final_message()
    assert last(upstream).path == f"{AT}/{CLAUDE}:streamRawPredict" and last(upstream).body["stream"] is True
    (block,) = [b for b in first.content if b.type == "thinking"]
    assert block.signature == sign(block.thinking) and first.model == "chat"
    turns += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
              {"role": "user", "content": "and now?"}]
    second = claude.messages.create(model="chat", max_tokens=2048, thinking=thinking, messages=turns)
    assert [b.text for b in second.content if b.type == "text"] == ["You said: and now?"]


def test_count_tokens_asks_vertex_count_tokens_method(claude: anthropic.Anthropic, upstream: FakeServer) -> None:
    count = claude.messages.count_tokens(model="chat", system="You are terse.",
                                         messages=[{"role": "user", "content": "hi " * 40}])
    assert count.input_tokens == 3 + 40  # the fake's tokenizer: a word a token
    sent = last(upstream)
    assert sent.path == f"{AT}/count-tokens:rawPredict"
    assert sent.body["model"] == CLAUDE and sent.body["anthropic_version"] == VERTEX_VERSION


def test_a_data_url_image_goes_up_as_a_base64_source(client: openai.OpenAI, upstream: FakeServer) -> None:
    content: Any = [{"type": "text", "text": "What is in this image?"}, {"type": "image_url", "image_url": {"url": PNG}}]
    reply = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": content}])
    assert text_of(reply) == "I see 1 image(s). You said: What is in this image?"
    media_type, _, data = PNG.removeprefix("data:").partition(";base64,")
    assert last(upstream).body["messages"][0]["content"][1] == {
        "type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
