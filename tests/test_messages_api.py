"""POST /v1/messages through the official `anthropic` SDK, for models on every kind of provider.

One stack serves four public models: one on the Anthropic fake (the body is relayed as received),
and one each on the OpenAI-compatible fake, the Gemini fake and the mock (translated to Chat and
back). The same SDK calls must work on all four; what only a relay can do (thinking signatures,
beta headers, the body's bytes) is checked on the Anthropic one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests import backends
from tests.backends import ALL, BROKE_KEY, MODELS, TIGHT_KEY, chat_text
from tests.fakes.anthropic_rules import sign
from tests.fakes.server import FakeServer
from tests.harness import TEST_KEY
from tests.providers import ANTHROPIC
from tests.stacks import StackFactory

FAKES = list(MODELS)
CLAUDE_CODE = json.loads((Path(__file__).parent / "fixtures" / "messages" / "request_claude_code_turns.json")
                         .read_text())["messages"]
WEATHER = {"name": "get_weather", "description": "Current weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, FakeServer]]:
    with backends.upstreams() as servers:
        yield servers


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory, upstreams: dict[str, FakeServer]) -> str:
    return backends.stack(module_stack_factory, upstreams).base_url


@pytest.fixture
def client(base_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key=TEST_KEY, max_retries=0)


def text_of(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


@pytest.mark.parametrize("model", ALL)
def test_create_answers_a_message_in_anthropics_shape(client: anthropic.Anthropic, base_url: str, model: str) -> None:
    message = client.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": "hello there"}])
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == model and message.stop_reason == "end_turn"
    assert text_of(message) and text_of(message) == chat_text(base_url, model, "hello there", max_tokens=64)
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@pytest.mark.parametrize("model", ALL)
def test_stream_helper_gives_the_final_message(client: anthropic.Anthropic, base_url: str, model: str) -> None:
    with client.messages.stream(model=model, max_tokens=64,
                                messages=[{"role": "user", "content": "stream it"}]) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed and text_of(final) == streamed == chat_text(base_url, model, "stream it", max_tokens=64)
    assert final.model == model and final.stop_reason == "end_turn" and final.usage.output_tokens > 0


@pytest.mark.parametrize("model", FAKES)
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_tool_round_trip_with_tool_result(client: anthropic.Anthropic, model: str, stream: bool) -> None:
    turns: list[Any] = [{"role": "user", "content": "What is the weather in two cities?"}]
    choice: Any = {"type": "any"}
    if stream:
        with client.messages.stream(model=model, max_tokens=256, tools=[WEATHER], tool_choice=choice,
                                    messages=turns) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(model=model, max_tokens=256, tools=[WEATHER], tool_choice=choice,
                                       messages=turns)
    assert first.stop_reason == "tool_use"
    calls = [block for block in first.content if block.type == "tool_use"]
    assert calls and all(c.name == "get_weather" and isinstance(c.input, dict) and c.id for c in calls)
    assert len({c.id for c in calls}) == len(calls)
    turns += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": c.id, "content": f"{18 + i}C, sunny"}
                                           for i, c in enumerate(calls)]}]
    # Every tool_use answered in the next turn: the upstreams' own rules (the fakes keep them) accept it.
    second = client.messages.create(model=model, max_tokens=256, tools=[WEATHER], messages=turns)
    assert text_of(second) and second.stop_reason == "end_turn"
    assert model == "gpt-translated" or "18C, sunny" in text_of(second)  # the other fakes quote the results


@pytest.mark.parametrize("model", ["claude-direct", "gemini-translated"])
def test_stop_sequences_cut_the_answer(client: anthropic.Anthropic, model: str) -> None:
    message = client.messages.create(model=model, max_tokens=64, stop_sequences=["there"],
                                     messages=[{"role": "user", "content": "hello there friend"}])
    assert text_of(message) == "You said: hello " and message.stop_reason in ("stop_sequence", "end_turn")


def test_stop_sequences_reach_a_translated_upstream_as_stop(client: anthropic.Anthropic,
                                                           upstreams: dict[str, FakeServer]) -> None:
    client.messages.create(model="gpt-translated", max_tokens=64, stop_sequences=["END", "STOP"],
                           messages=[{"role": "user", "content": "hello"}])
    assert upstreams["gpt-translated"].requests[-1].body["stop"] == ["END", "STOP"]


def test_thinking_signatures_come_back_byte_identical_and_pass_the_next_turn(
        client: anthropic.Anthropic, upstreams: dict[str, FakeServer]) -> None:
    turns: list[Any] = [{"role": "user", "content": "think about Paris"}]
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    with client.messages.stream(model="claude-direct", max_tokens=2048, thinking=thinking, messages=turns) as s:
        first = s.get_final_message()
    (block,) = [b for b in first.content if b.type == "thinking"]
    assert block.signature == sign(block.thinking)  # exactly what the upstream signed
    turns += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
              {"role": "user", "content": "and now?"}]
    # The fake, like Anthropic, refuses a thinking block whose signature changed in transit.
    second = client.messages.create(model="claude-direct", max_tokens=2048, thinking=thinking, messages=turns)
    assert text_of(second) == "You said: and now?"


def test_the_body_reaches_an_anthropic_deployment_as_sent_with_its_beta_header(
        base_url: str, upstreams: dict[str, FakeServer]) -> None:
    body = {"max_tokens": 32, "model": "claude-direct", "service_tier": "auto",
            "system": [{"type": "text", "text": "Be brief, use the cache.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "caf\u00e9 \u2615",
                                                        "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]}
    raw = json.dumps(body, ensure_ascii=False).encode()
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json",
               "anthropic-beta": "interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"}
    answer = httpx.post(f"{base_url}/messages?beta=true", content=raw, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "claude-direct" and answer.json()["usage"]["cache_read_input_tokens"] == 100
    sent = upstreams["claude-direct"].requests[-1]
    assert sent.headers["anthropic-beta"] == headers["anthropic-beta"] and sent.headers["x-api-key"] == ANTHROPIC.key
    assert list(sent.body) == list(body) and sent.body == {**body, "model": ANTHROPIC.models["chat"]}


def test_the_beta_header_is_not_sent_to_a_translated_deployment(
        client: anthropic.Anthropic, upstreams: dict[str, FakeServer]) -> None:
    message = client.messages.create(model="gpt-translated", max_tokens=16, messages=[{"role": "user", "content": "hi"}],
                                     extra_headers={"anthropic-beta": "claude-code-20250219"})
    assert text_of(message)
    assert not any(h.startswith("anthropic") for h in upstreams["gpt-translated"].requests[-1].headers)


@pytest.mark.parametrize("model", ALL)
def test_count_tokens_counts_on_anthropic_and_estimates_elsewhere(client: anthropic.Anthropic, model: str,
                                                                  upstreams: dict[str, FakeServer]) -> None:
    short = client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "hi"}])
    long = client.messages.count_tokens(model=model, system="You are terse. " * 50,
                                        messages=[{"role": "user", "content": "hi " * 400}])
    assert 0 < short.input_tokens < long.input_tokens
    if model == "claude-direct":  # the upstream's own count (its fake's tokenizer: a word a token)...
        assert (short.input_tokens, long.input_tokens) == (1, 3 * 50 + 400)
        asked = upstreams[model].requests[-1]
        assert asked.path == "/v1/messages/count_tokens" and asked.body["model"] == ANTHROPIC.models["chat"]
    else:  # ...or admission's estimate, about four characters a token
        assert long.input_tokens > 250


def test_a_bearer_token_works_as_well_as_x_api_key(base_url: str) -> None:
    client = anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), auth_token=TEST_KEY, max_retries=0)
    message = client.messages.create(model="claude-direct", max_tokens=16, messages=[{"role": "user", "content": "yo"}])
    assert text_of(message) == "You said: yo"


def test_models_list_in_anthropics_shape(client: anthropic.Anthropic) -> None:
    ids = [model.id for model in client.models.list()]
    assert set(ALL) <= set(ids)
    assert client.models.retrieve("claude-direct").display_name == "claude-direct"


# ---------------------------------------------------------------- errors, Anthropic-shaped


def test_a_wrong_key_is_an_authentication_error(base_url: str) -> None:
    client = anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key="sk-nope-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model="gpt-translated", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "authentication_error"


def test_an_unknown_model_is_a_not_found_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["error"]["type"] == "not_found_error" and "no-such-model" in caught.value.message


@pytest.mark.parametrize("body, says", [
    ({"model": "gpt-translated", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "gpt-translated", "max_tokens": 8, "messages": []}, "messages"),
    ({"model": "gpt-translated", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search"),
], ids=["no-max-tokens", "no-messages", "server-tool"])
def test_an_invalid_request_is_an_invalid_request_error(base_url: str, body: dict[str, Any], says: str) -> None:
    answer = httpx.post(f"{base_url}/messages", json=body, headers={"x-api-key": TEST_KEY}, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error"
    assert says in answer.json()["error"]["message"] and answer.headers["request-id"]


def test_an_upstream_rate_limit_is_a_rate_limit_error_with_retry_after(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="claude-limited", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert caught.value.response.headers["retry-after"] == "7"


def test_unknown_routes_under_messages_answer_anthropic_shaped_404(base_url: str) -> None:
    answer = httpx.post(f"{base_url}/messages/batches", json={}, headers={"x-api-key": TEST_KEY}, timeout=10)
    assert answer.status_code in (404, 405)
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] in ("not_found_error",
                                                                                  "invalid_request_error")


def test_openai_routes_keep_openais_error_shape(base_url: str) -> None:
    answer = httpx.post(f"{base_url}/chat/completions", json={"model": "nope", "messages": []},
                        headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=10)
    assert "error" in answer.json() and answer.json().get("type") != "error"




# ---------------------------------------------------------------- the machinery chat has


def events_of(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event; the name must equal the data's `type`, as the SDK dispatches on it."""
    found = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            data = json.loads(fields["data"])
            assert fields.get("event") == data["type"], block
            found.append((fields["event"], data))
    return found


def assert_well_formed(events: list[tuple[str, dict[str, Any]]]) -> None:
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"], names
    open_blocks: list[int] = []
    for name, data in events:
        if name == "content_block_start":
            assert not open_blocks and data["index"] == len([n for n, _ in events[:events.index((name, data))]
                                                            if n == "content_block_start"])
            open_blocks.append(data["index"])
        elif name == "content_block_delta":
            assert open_blocks == [data["index"]]
        elif name == "content_block_stop":
            assert open_blocks.pop() == data["index"]
    assert not open_blocks


@pytest.mark.parametrize("model", ["gpt-translated", "gemini-translated", "mock-translated"])
def test_a_claude_code_session_on_a_translated_model_completes_with_a_well_formed_stream(
        base_url: str, model: str) -> None:
    """What Claude Code sends: beta headers, `?beta=true`, system blocks with cache_control, tools with
    cache_control, thinking, a multi-turn tool_use/tool_result history, an unknown top-level field,
    streaming."""
    headers = {"authorization": f"Bearer {TEST_KEY}", "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
               "x-app": "cli", "user-agent": "claude-cli/2.0.0 (external, cli)", "x-stainless-timeout": "600"}
    with httpx.stream("POST", f"{base_url}/messages?beta=true", json={**CLAUDE_CODE, "model": model},
                      headers=headers, timeout=20) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        events = events_of(answer.read().decode())
    assert_well_formed(events)
    assert events[0][1]["message"]["model"] == model and events[-2][1]["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("model", ["claude-then-gpt", "gpt-then-claude"])
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_failover_before_the_first_event_crosses_between_relayed_and_translated(
        client: anthropic.Anthropic, model: str, stream: bool) -> None:
    request: Any = {"model": model, "max_tokens": 32, "messages": [{"role": "user", "content": "hello there"}]}
    if stream:
        with client.messages.stream(**request) as s:
            message = s.get_final_message()
    else:
        message = client.messages.with_raw_response.create(**request)
        assert message.headers["x-llm-broker-attempts"] == "2"
        message = message.parse()
    assert message.model == model and message.stop_reason == "end_turn" and text_of(message)
    assert (text_of(message) == "You said: hello there") == (model == "gpt-then-claude")


@pytest.mark.parametrize("model", ["claude-dies", "gpt-dies"])
def test_a_failure_after_the_first_event_ends_the_stream_with_an_error_event(client: anthropic.Anthropic,
                                                                          model: str) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(model=model, max_tokens=64,
                                    messages=[{"role": "user", "content": "hello there"}]) as s:
            for _ in s.text_stream:
                pass
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] in ("overloaded_error", "api_error")


def test_our_own_rate_limit_refuses_in_anthropics_shape(base_url: str) -> None:
    tight = anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key=TIGHT_KEY, max_retries=0)
    tight.messages.create(model="mock-translated", max_tokens=8, messages=[{"role": "user", "content": "one"}])
    with pytest.raises(anthropic.RateLimitError) as caught:
        tight.messages.create(model="mock-translated", max_tokens=8, messages=[{"role": "user", "content": "two"}])
    assert caught.value.body["error"]["type"] == "rate_limit_error" and "rate limit" in caught.value.message.lower()
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_a_budget_refuses_in_anthropics_shape(base_url: str) -> None:
    broke = anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key=BROKE_KEY, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as caught:  # a dollar a token: over $1 before it starts
        broke.messages.create(model="priced", max_tokens=64, messages=[{"role": "user", "content": "hello there"}])
    assert caught.value.body["error"]["type"] == "rate_limit_error" and "budget" in caught.value.message


@pytest.mark.parametrize("model", ["claude-direct", "gpt-translated"])
def test_a_messages_stream_resumes_in_anthropics_framing_and_only_for_its_tenant(base_url: str, model: str) -> None:
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
    body = {"model": model, "max_tokens": 32, "stream": True, "messages": [{"role": "user", "content": "resume me"}]}
    with httpx.stream("POST", f"{base_url}/messages", json=body, headers=headers, timeout=10) as answer:
        request_id = answer.headers["x-request-id"]
        live = events_of(answer.read().decode())
    assert request_id.startswith("req_") and live[-1][0] == "message_stop"
    replayed = httpx.get(f"{base_url}/jobs/{request_id}/events", headers=headers, timeout=10)
    assert replayed.status_code == 200 and "[DONE]" not in replayed.text
    assert [e for e in events_of(replayed.text) if e[0] != "ping"] == [e for e in live if e[0] != "ping"]
    resumed = httpx.get(f"{base_url}/jobs/{request_id}/events", timeout=10,
                        headers={**headers, "last-event-id": replayed.text.split("id: ")[2].split("\n")[0]})
    assert [e for e in events_of(resumed.text) if e[0] != "ping"] == [e for e in live if e[0] != "ping"][2:]
    other = {"x-api-key": TIGHT_KEY}
    assert httpx.get(f"{base_url}/jobs/{request_id}/events", headers=other, timeout=10).status_code == 404
    assert httpx.delete(f"{base_url}/jobs/{request_id}", headers=other, timeout=10).status_code == 404


PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.mark.parametrize("model", FAKES)
def test_images_base64_and_url_reach_every_backend(client: anthropic.Anthropic, model: str,
                                                   upstreams: dict[str, FakeServer]) -> None:
    content: Any = [{"type": "text", "text": "What is in this image?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}}]
    message = client.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": content}])
    assert text_of(message) and message.stop_reason == "end_turn"
    sent = json.dumps(upstreams[model].requests[-1].body)
    assert PIXEL in sent  # the image went up, in whatever form the upstream takes it
    if model == "claude-direct":
        assert text_of(message).startswith("I see 1 image(s).")
    url: Any = [{"type": "text", "text": "And this one?"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]
    if model != "gemini-translated":  # Gemini takes inline data or its own file URIs only
        client.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": url}])
        assert "https://example.com/cat.png" in json.dumps(upstreams[model].requests[-1].body)


def test_no_worker_is_529_overloaded_which_the_sdk_retries(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model="nobody-home", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 529 and caught.value.body["error"]["type"] == "overloaded_error"
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_an_upstream_server_error_is_an_api_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model="claude-broken", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code >= 500 and caught.value.body["error"]["type"] == "api_error"


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_client_that_leaves_cancels_the_upstream_call(base_url: str, upstreams: dict[str, FakeServer],
                                                        stream: bool) -> None:
    stats = f"{upstreams['gpt-translated'].base_url}/fake/stats"
    before = httpx.get(stats).json()["abandoned"]
    body = {"model": "gpt-slow", "max_tokens": 8, "stream": stream, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up on a 30 s answer after 1 s
        with httpx.stream("POST", f"{base_url}/messages", json=body, headers={"x-api-key": TEST_KEY},
                          timeout=httpx.Timeout(10, read=1)) as answer:
            answer.read()
    deadline = time.monotonic() + 10
    while httpx.get(stats).json()["abandoned"] == before:  # the worker closed the upstream connection
        assert time.monotonic() < deadline
        time.sleep(0.1)
