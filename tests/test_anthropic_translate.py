"""Golden tests of the Anthropic translation (workers/providers/anthropic_translate.py, anthropic_stream.py).

Fixtures in tests/fixtures/anthropic/ pair an input with the exact expected
output; stream transcripts go through the real SSE parser in every slicing, and
the resulting chunks through the openai SDK's own stream accumulator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from broker.errors import InvalidRequest, UpstreamError
from broker.wire import ChatChunk, chat_request_decoder, json_encoder
from tests.fakes.anthropic_rules import validate
from workers.providers.anthropic_stream import AnthropicStreamState
from workers.providers.anthropic_translate import (
    error_from_response,
    from_anthropic,
    to_anthropic,
)
from workers.providers.anthropic_wire import request_encoder
from workers.providers.sse import SSEParser

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def request(body: dict[str, Any]) -> Any:
    return chat_request_decoder.decode(json.dumps({"model": "claude", **body}))


def translate(body: dict[str, Any], **kw: Any) -> Any:
    out = to_anthropic(request(body), model=kw.pop("model", "claude-x"), default_max_tokens=4096,
                       stream=kw.pop("stream", False))
    return json.loads(request_encoder.encode(out))


def run_stream(lines: list[str], *, slice_size: int | None = None, json_mode: bool = False) -> list[ChatChunk]:
    raw = ("\n".join(lines) + "\n\n").encode()
    pieces = [raw] if slice_size is None else [raw[i:i + slice_size] for i in range(0, len(raw), slice_size)]
    state, parser = AnthropicStreamState(json_mode=json_mode, created=1700000000), SSEParser()
    chunks = [c for p in pieces for e in parser.feed(p) for c in state.on_event(e.event, e.data)]
    assert state.done
    return chunks


def as_json(value: Any) -> Any:
    return json.loads(json_encoder.encode(value))


# ---------------------------------------------------------------- golden fixtures


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("request_*.json")))
def test_openai_request_becomes_the_recorded_anthropic_request(name: str) -> None:
    case = fixture(name)
    out = to_anthropic(chat_request_decoder.decode(json.dumps(case["openai"])), model=case["model"],
                       default_max_tokens=case["default_max_tokens"], stream=case["stream"])
    assert json.loads(request_encoder.encode(out)) == case["anthropic"]
    validate(case["anthropic"])  # and the fake's copy of the API's rules accepts it


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("response_*.json")))
def test_anthropic_response_becomes_the_recorded_openai_response(name: str) -> None:
    case = fixture(name)
    out = from_anthropic(json.dumps(case["anthropic"]).encode(), json_mode=case["json_mode"], created=case["created"])
    assert as_json(out) == case["openai"]


@pytest.mark.parametrize("slice_size", [None, 1, 7, 64])
@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("stream_*.json")))
def test_event_transcript_becomes_the_recorded_chunks_however_sliced(name: str, slice_size: int | None) -> None:
    case = fixture(name)
    chunks = run_stream(case["sse"], slice_size=slice_size, json_mode=case["json_mode"])
    assert [as_json(c) for c in chunks] == case["openai_chunks"]


def test_parallel_tool_calls_have_stable_indexes_and_name_their_call_once() -> None:
    chunks = run_stream(fixture("stream_parallel_tools.json")["sse"])
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [call for d in deltas if d.tool_calls for call in d.tool_calls]
    assert [c.index for c in calls] == [0, 0, 0, 0, 1, 1, 1]
    assert [c.id for c in calls if c.id] == ["toolu_01NRLabsLyVHZPKxbKvkfSMn", "toolu_01Vq8fTzGxpZ2ZCbTTyzYkKD"]
    assert all(c.function.name is msgspec.UNSET for c in calls if c.id is msgspec.UNSET)  # type: ignore[union-attr]
    # The SDK's own accumulator rebuilds exactly two calls from the chunks.
    sdk = ChatCompletionStreamState()
    for chunk in chunks:
        if chunk.choices:
            sdk.handle_chunk(ChatCompletionChunk.model_validate(as_json(chunk)))
    final = sdk.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls" and final.message.content == "I'll check both cities."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in final.message.tool_calls or []] == [
        ("get_weather", {"location": "Paris"}), ("get_weather", {"location": "Tokyo"})]


# ---------------------------------------------------------------- request mapping details


def test_parallel_tool_calls_false_without_tool_choice_is_auto_with_parallel_disabled() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = translate({"messages": [{"role": "user", "content": "x"}], "tools": tools, "parallel_tool_calls": False})
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    out = translate({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "none",
                     "parallel_tool_calls": False})
    assert out["tool_choice"] == {"type": "none"}  # the API accepts the flag on auto/any/tool only


def test_json_object_with_client_tools_must_call_a_tool_or_answer_in_json() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = translate({"messages": [{"role": "user", "content": "x"}], "tools": tools,
                     "response_format": {"type": "json_object"}})
    assert [t["name"] for t in out["tools"]] == ["f", "json_response"]
    assert out["tools"][1]["input_schema"] == {"type": "object"}
    assert out["tool_choice"] == {"type": "any"}


def test_tool_message_with_empty_content_and_assistant_without_text() -> None:
    out = translate({"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "t1", "content": ""}],
        "tools": [{"type": "function", "function": {"name": "f"}}]})
    assert out["messages"][1] == {"role": "assistant",
                                  "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]}
    assert out["messages"][2] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]}


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AAAA"}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
])
def test_what_anthropic_cannot_take_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(body)
    assert info.value.param == param


# ---------------------------------------------------------------- response and stream details


@pytest.mark.parametrize(("stop_reason", "finish_reason"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("model_context_window_exceeded", "length"), ("pause_turn", "stop"),
])
def test_stop_reasons_map_to_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    body = {"id": "msg_1", "model": "m", "content": [{"type": "text", "text": "hi"}], "stop_reason": stop_reason,
            "usage": {"input_tokens": 1, "output_tokens": 1}}
    assert from_anthropic(json.dumps(body).encode()).choices[0].finish_reason == finish_reason


def test_unknown_events_and_thinking_deltas_are_ignored() -> None:
    state = AnthropicStreamState()
    assert state.on_event("future_event", b'{"type":"future_event","x":1}') == []
    assert state.on_event("content_block_start",
                          b'{"type":"content_block_start","index":0,"content_block":{"type":"thinking"}}') == []
    assert state.on_event("content_block_delta", b'{"type":"content_block_delta","index":0,'
                          b'"delta":{"type":"thinking_delta","thinking":"hmm"}}') == []
    assert state.on_event("ping", b'{"type": "ping"}') == []


@pytest.mark.parametrize(("kind", "status", "retryable"), [
    ("overloaded_error", 503, True), ("api_error", 502, True), ("invalid_request_error", 400, False),
])
def test_error_event_mid_stream_raises_an_upstream_error(kind: str, status: int, retryable: bool) -> None:
    state = AnthropicStreamState()
    data = json.dumps({"type": "error", "error": {"type": kind, "message": "Overloaded sk-ant-api03-SECRET123"}})
    with pytest.raises(UpstreamError) as info:
        state.on_event("error", data.encode())
    assert (info.value.status, info.value.retryable) == (status, retryable)
    assert "SECRET123" not in info.value.message and kind in info.value.message


@pytest.mark.parametrize(("status", "kind", "mapped", "retryable"), [
    (529, "overloaded_error", 503, True), (429, "rate_limit_error", 429, True),
    (400, "invalid_request_error", 400, False), (401, "authentication_error", 502, False),
    (500, "api_error", 502, True),
])
def test_http_errors_keep_anthropic_message_and_map_status(status: int, kind: str, mapped: int,
                                                           retryable: bool) -> None:
    body = json.dumps({"type": "error", "error": {"type": kind, "message": "bad key sk-ant-api03-abcdef123456"},
                       "request_id": "req_1"}).encode()
    err = error_from_response(status, body, {"retry-after": "7"} if status == 429 else {})
    assert (err.status, err.retryable) == (mapped, retryable)
    assert kind in err.message and "abcdef123456" not in err.message
    if status == 429:
        assert err.retry_after_s == 7.0 and err.code == "rate_limit_exceeded"


def test_error_body_that_is_not_json_still_maps_by_status() -> None:
    err = error_from_response(502, b"<html>Bad Gateway</html>", {})
    assert err.status == 502 and "HTTP 502" in err.message
