"""broker/cache/replay.py: streamed answers assembled into the body the cache keeps, and bodies replayed
as chunks the SDK's own accumulator rebuilds exactly (pure functions, no stack)."""

from __future__ import annotations

import json
from typing import Any

from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from broker.cache.replay import assemble, hit_body, replay
from broker.wire import Usage


def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                       "choices": choices, **extra}).encode()


STREAM = [
    chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
           {"index": 1, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {"content": "Hel"}, "logprobs": {"content": [{"token": "Hel", "logprob": -1, "bytes": None, "top_logprobs": []}]}}]),
    chunk([{"index": 0, "delta": {"content": "lo"}, "logprobs": {"content": [{"token": "lo", "logprob": -2, "bytes": None, "top_logprobs": []}]}}]),
    chunk([{"index": 1, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                  "function": {"name": "f", "arguments": ""}}]}}]),
    chunk([{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}}]),
    chunk([{"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]),
    chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    chunk([{"index": 1, "delta": {}, "finish_reason": "tool_calls"}]),
]


def test_a_stream_is_assembled_into_the_body_a_plain_request_gets() -> None:
    body = assemble("chat", STREAM, Usage(3, 4, 7, cost=0.5))
    assert body is not None
    answer = json.loads(body)
    first, second = answer["choices"]
    assert first["message"]["content"] == "Hello" and first["finish_reason"] == "stop"
    assert [t["token"] for t in first["logprobs"]["content"]] == ["Hel", "lo"]
    assert second["message"]["content"] is None and second["finish_reason"] == "tool_calls"
    assert second["message"]["tool_calls"] == [{"id": "call_1", "function": {"name": "f", "arguments": "{\"a\":1}"},
                                                "type": "function"}]
    assert answer["usage"]["total_tokens"] == 7 and answer["object"] == "chat.completion"


def test_an_unfinished_stream_is_never_assembled() -> None:
    assert assemble("chat", STREAM[:-1], None) is None
    assert assemble("chat", [], None) is None


def test_a_replay_rebuilds_the_same_answer_in_the_sdk_accumulator_at_no_cost() -> None:
    body = assemble("chat", STREAM, Usage(3, 4, 7, cost=0.5))
    assert body is not None
    events = replay("chat", body, "chatcmpl-new", wants_usage=True)
    state = ChatCompletionStreamState()
    for event in events:
        state.handle_chunk(ChatCompletionChunk.model_validate_json(event))
    rebuilt = state.get_final_completion()
    assert rebuilt.id == "chatcmpl-new"
    assert rebuilt.choices[0].message.content == "Hello"
    call = rebuilt.choices[1].message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "f", "{\"a\":1}")  # type: ignore[union-attr]
    usage = json.loads(events[-1])["usage"]
    assert usage["total_tokens"] == 7 and usage["cost"] == 0
    assert all(json.loads(e)["usage"] is None for e in events[:-1])  # as OpenAI sends once usage is asked


def test_a_hit_body_is_the_answer_under_the_requests_own_id_at_no_cost() -> None:
    body = assemble("chat", STREAM, Usage(3, 4, 7, cost=0.5))
    assert body is not None
    hit = json.loads(hit_body("chat", body, "chatcmpl-other"))
    assert hit["id"] == "chatcmpl-other" and hit["usage"]["cost"] == 0
    assert hit["choices"] == json.loads(body)["choices"]


def test_legacy_completion_streams_round_trip() -> None:
    def text(choices: list[dict[str, Any]]) -> bytes:
        return json.dumps({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                           "choices": choices}).encode()

    body = assemble("text", [text([{"index": 0, "text": "once "}]), text([{"index": 0, "text": "upon"}]),
                             text([{"index": 0, "text": "", "finish_reason": "length"}])], Usage(1, 2, 3))
    assert body is not None and json.loads(body)["choices"][0]["text"] == "once upon"
    events = [json.loads(e) for e in replay("text", body, "cmpl-2", wants_usage=False)]
    assert "".join(e["choices"][0]["text"] for e in events) == "once upon"
    assert events[-1]["choices"][0]["finish_reason"] == "length" and "usage" not in events[0]
