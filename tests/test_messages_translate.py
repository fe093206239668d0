"""Golden tests of Anthropic Messages served over Chat (broker/inbound/messages.py, messages_stream.py).

Fixtures in tests/fixtures/messages/ pair an input with the exact expected output. What the
client reads is checked with the official `anthropic` SDK: `to_message` output through its
`Message` model, stream events through `client.messages.stream()` on a mock transport, so its
own SSE decoder and accumulator rebuild the message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import msgspec
import pytest

from broker.errors import InvalidRequest
from broker.inbound.messages import to_chat, to_message
from broker.inbound.messages_stream import MessagesStream
from broker.wire import (
    ChatChunk,
    ChatCompletion,
    Usage,
    chat_request_decoder,
    json_encoder,
)
from broker.wire.messages import (
    encoder,
    finish_reason_of,
    messages_envelope_decoder,
    messages_request_decoder,
    stop_reason_of,
)
from broker.wire.messages_events import error_event
from tests.chat_answers import TEXT_THEN_PARALLEL_CALLS, call, chunk, completion, events

FIXTURES = Path(__file__).parent / "fixtures" / "messages"
USER = [{"role": "user", "content": "hi"}]


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def chat(body: dict[str, Any]) -> Any:
    req = messages_request_decoder.decode(json.dumps({"model": "m", "max_tokens": 100, **body}))
    return json.loads(json_encoder.encode(to_chat(req)))


def sdk_read(events: list[bytes], *, slice_size: int | None = None) -> anthropic.types.Message:
    """The SDK's own `messages.stream()` over our bytes, served by a mock transport, sliced as given."""
    raw = b"".join(events)

    def pieces() -> Iterator[bytes]:
        size = slice_size or len(raw)
        yield from (raw[i:i + size] for i in range(0, len(raw), size))

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=pieces())

    client = anthropic.Anthropic(api_key="k", base_url="http://broker.test", max_retries=0,
                                 http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    with client.messages.stream(model="m", max_tokens=100, messages=[{"role": "user", "content": "x"}]) as stream:
        return stream.get_final_message()
def run(chunks: list[ChatChunk], usage: Usage | None = None) -> list[bytes]:
    stream = MessagesStream("claude-alias", "msg_01ABC")
    return [event for c in chunks for event in stream.on_chunk(c)] + stream.finish(usage)


# ---------------------------------------------------------------- request


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("request_*.json")))
def test_messages_request_becomes_the_recorded_chat_request(name: str) -> None:
    case = fixture(name)
    out = to_chat(messages_request_decoder.decode(json.dumps(case["messages"])))
    assert json.loads(json_encoder.encode(out)) == case["chat"]
    chat_request_decoder.decode(json_encoder.encode(out))  # and our own Chat edge would accept it


@pytest.mark.parametrize(("budget", "effort"), [(1024, "low"), (4095, "low"), (4096, "medium"), (16384, "high")])
def test_thinking_budget_picks_a_reasoning_effort_band(budget: int, effort: str) -> None:
    assert chat({"messages": USER, "thinking": {"type": "enabled", "budget_tokens": budget}})["reasoning_effort"] == effort


def test_what_chat_has_no_use_for_is_dropped() -> None:
    out = chat({"messages": USER, "top_k": 5, "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
                "tool_choice": {"type": "any"}, "metadata": {"user_id": None}})
    assert out == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 100}


@pytest.mark.parametrize(("choice", "tool_choice", "parallel"), [
    ({"type": "auto"}, "auto", None), ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ({"type": "none", "disable_parallel_tool_use": True}, "none", None),
    ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}, None),
])
def test_tool_choice_maps_to_chat(choice: dict[str, Any], tool_choice: Any, parallel: bool | None) -> None:
    out = chat({"messages": USER, "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": choice})
    assert out["tool_choice"] == tool_choice and out.get("parallel_tool_calls") == parallel


def test_tool_results_come_first_then_the_rest_of_the_turn_and_thinking_only_turns_vanish() -> None:
    out = chat({"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "text", "text": "and"},
                                     {"type": "tool_result", "tool_use_id": "t1"}]}]})
    assert out["messages"][1:] == [
        {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": ""},
        {"role": "user", "content": "and"}]


@pytest.mark.parametrize(("body", "param"), [
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
    ({"tools": [{"name": "x" * 65, "input_schema": {}}]}, "tools[0].name"),
    ({"output_config": {"format": {"type": "grammar"}}}, "output_config.format"),
    ({"messages": [{"role": "user", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search"}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": [
        {"type": "web_search_tool_result", "tool_use_id": "s", "content": []}]}]}, "messages[1].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "messages[0].content[0].source"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x"}}]}]},
     "messages[0].content[0].source"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "search_result", "source": "s", "title": "t", "content": []}]}]}]},
     "messages[0].content[0].content[0]"),
    ({"messages": [{"role": "system", "content": [{"type": "image", "source": {"type": "url", "url": "u"}}]}]},
     "messages[0].content[0]"),
])
def test_what_chat_cannot_carry_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat({"messages": USER, **body})
    assert info.value.param == param


def test_inbound_bodies_are_lenient_but_what_is_read_is_validated() -> None:
    body: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": USER, "context_management": {}, "speed": "fast"}
    assert messages_request_decoder.decode(json.dumps(body)).max_tokens == 5
    cases: list[tuple[dict[str, Any], str]] = [
        ({"max_tokens": -1}, "$.max_tokens"), ({"max_tokens": 2**64}, "$.max_tokens"),
        ({"temperature": 1.5}, "$.temperature"), ({"tools": [{"name": "f"}]}, "$.tools[0]"),
        ({"thinking": {"type": "enabled"}}, "$.thinking"), ({"tool_choice": {"type": "tool"}}, "$.tool_choice")]
    for bad, path in cases:
        with pytest.raises(msgspec.ValidationError, match=path.replace("$", r"\$").replace("[", r"\[")):
            messages_request_decoder.decode(json.dumps({**body, **bad}))
    # Pass-through only needs the envelope, whatever blocks the body holds.
    odd = {**body, "messages": [{"role": "user", "content": [{"type": "block_from_2030"}]}]}
    assert messages_envelope_decoder.decode(json.dumps(odd)).model == "m"


# ---------------------------------------------------------------- response


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("response_*.json")))
def test_chat_completion_becomes_the_recorded_message_the_sdk_accepts(name: str) -> None:
    case = fixture(name)
    out = to_message(msgspec.json.decode(json.dumps(case["chat"]), type=ChatCompletion), model="claude-alias",
                     message_id="msg_01XYZ")
    body = json.loads(encoder.encode(out))
    assert body == case["message"]
    assert anthropic.types.Message.model_validate(body).to_dict() == body


@pytest.mark.parametrize(("finish", "stop"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal"),
    ("function_call", "tool_use"), (None, "end_turn"), ("something_new", "end_turn"),
])
def test_finish_reasons_map_to_stop_reasons(finish: str | None, stop: str) -> None:
    assert to_message(completion({"content": "x"}, finish), model="m", message_id="1").stop_reason == stop


def test_one_reason_table_reads_both_ways() -> None:
    for stop in ("end_turn", "max_tokens", "tool_use", "refusal"):
        assert stop_reason_of(finish_reason_of(stop)) == stop
    assert finish_reason_of("pause_turn") == "stop" and finish_reason_of(None) is None


def test_tool_calls_finished_with_stop_and_refusals_say_what_happened() -> None:
    calls = {"tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}
    msg = to_message(completion(calls), model="m", message_id="42")
    assert (msg.id, msg.stop_reason, msg.content[0]) == ("msg_42", "tool_use", msg.content[0])
    refused = to_message(completion({"refusal": "I can't help with that."}), model="m", message_id="msg_1")
    assert refused.stop_reason == "refusal" and json.loads(encoder.encode(refused.content)) == [
        {"type": "text", "text": "I can't help with that."}]
    empty = json.loads(encoder.encode(to_message(completion({}), model="m", message_id="msg_1")))
    assert empty["content"] == [] and empty["usage"] == {"input_tokens": 0, "output_tokens": 0,
                                                         "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


# ---------------------------------------------------------------- stream


@pytest.mark.parametrize("slice_size", [None, 1, 7])
def test_the_sdk_rebuilds_text_and_parallel_tool_calls_from_our_stream(slice_size: int | None) -> None:
    final = sdk_read(run(TEXT_THEN_PARALLEL_CALLS), slice_size=slice_size)
    assert final.to_dict(exclude_none=True) == {
        "id": "msg_01ABC", "type": "message", "role": "assistant", "model": "claude-alias",
        "content": [{"type": "text", "text": "Checking both."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Tokyo"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 400, "output_tokens": 30, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 100}}


def test_stream_events_are_in_order_and_blocks_never_interleave() -> None:
    got = events(run(TEXT_THEN_PARALLEL_CALLS))
    assert [e["type"] for e in got] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta",  # call_1, live
        "content_block_stop", "content_block_start", "content_block_delta", "content_block_stop",  # call_2, whole
        "message_delta", "message_stop"]
    assert got[0]["message"] == {"id": "msg_01ABC", "type": "message", "role": "assistant", "model": "claude-alias",
                                 "content": [], "stop_reason": None, "stop_sequence": None,
                                 "usage": {"input_tokens": 0, "output_tokens": 0}}
    assert [e["index"] for e in got if "index" in e] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert got[5]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}
    assert got[10]["delta"] == {"type": "input_json_delta", "partial_json": '{"city": "Tokyo"}'}
    assert got[12]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


def test_usage_given_at_finish_and_a_server_that_numbers_every_call_zero() -> None:
    chunks = [chunk(call(0, "a", "f", "{}")), chunk(call(0, "b", "g", "{}")), chunk({}, "stop")]
    usage = Usage(prompt_tokens=10, completion_tokens=3, total_tokens=13)
    final = sdk_read(run(chunks, usage))
    assert [(b.type, getattr(b, "name", None)) for b in final.content] == [("tool_use", "f"), ("tool_use", "g")]
    assert final.stop_reason == "tool_use" and (final.usage.input_tokens, final.usage.output_tokens) == (10, 3)


def test_text_during_a_tool_call_waits_for_it_and_late_chunks_are_ignored() -> None:
    stream = MessagesStream("m", "1", input_tokens=7)
    frames = [*stream.on_chunk(chunk(call(0, "c", "f", '{"a":1}'))), *stream.on_chunk(chunk({"content": "after"}))]
    frames += stream.finish()
    assert stream.finish() == [] and stream.on_chunk(chunk({"content": "late"})) == []
    final = sdk_read(frames)
    assert [b.type for b in final.content] == ["tool_use", "text"] and final.content[1].text == "after"  # type: ignore[union-attr]
    assert final.id == "msg_1" and final.usage.input_tokens == 7 and final.stop_reason == "tool_use"


def test_an_empty_stream_is_still_a_whole_message() -> None:
    final = sdk_read(MessagesStream("m", "msg_1").finish())
    assert final.content == [] and final.stop_reason == "end_turn"


def test_error_event_after_the_200_raises_in_the_sdk() -> None:
    frames = MessagesStream("m", "msg_1").on_chunk(chunk({"content": "par"}))
    frames.append(error_event("overloaded_error", "Overloaded"))
    assert events(frames[-1:]) == [{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}]
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        sdk_read(frames)
