"""broker/cache/replay.py: streamed answers assembled into the body the cache keeps, and bodies replayed
as chunks the SDK's own accumulator rebuilds exactly (pure functions, no stack); and
broker/cache/replay_responses.py: a Response kept whole, given back as a new response or its stream."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import Response as SDKResponse

from broker.cache import replay_responses
from broker.cache.replay import assemble, hit_body, replay
from broker.inbound.responses_stream import ResponsesStream
from broker.wire import ChatChunk, Usage
from broker.wire.responses import ResponsesRequest, responses_request_decoder


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


# ---- /v1/responses (broker/cache/replay_responses.py): a Response kept whole, a hit a new response


def _responses_request(**fields: Any) -> ResponsesRequest:
    return responses_request_decoder.decode(json.dumps({"model": "m", "input": "weather?", "temperature": 0,
                                                        "tools": [{"type": "function", "name": "f", "strict": False,
                                                                   "parameters": {"type": "object"}}],
                                                        **fields}).encode())


ASKED = _responses_request(metadata={"run": "1"})
# The same answer asked again: what the cache key leaves out may differ, and the hit echoes it.
AGAIN = _responses_request(metadata={"run": "2"}, user="someone", store=False, stream=True)


def _answer(finish: str) -> list[ChatChunk]:
    """A text delta and a whole tool call, each in one piece, as a replay sends them."""
    return [msgspec.json.decode(raw, type=ChatChunk) for raw in (
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}]),
        chunk([{"index": 0, "delta": {"content": "Hello"}}]),
        chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                      "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": finish}]))]


def _worker_stream(request: ResponsesRequest, response_id: str,
                   finish: str = "tool_calls") -> tuple[list[bytes], bytes]:
    """As workers/responses.py streams: its events, and the closing ones held back as the job's Final body."""
    stream = ResponsesStream(request, response_id, 7)
    events = stream.start()
    for piece in _answer(finish):
        events += stream.on_chunk(piece)
    return events, b"".join(stream.finish(Usage(3, 4, 7)))


def _data(block: bytes) -> Any:
    return json.loads(block[block.index(b"data: ") + 6:])


def test_a_response_is_kept_whole_from_a_stream_or_a_plain_answer() -> None:
    _, final = _worker_stream(ASKED, "resp_first")
    kept = replay_responses.assemble(final, streamed=True)
    assert kept is not None and json.loads(kept) == _data(final)["response"]
    assert json.loads(kept)["status"] == "completed" and json.loads(kept)["usage"]["total_tokens"] == 7
    assert replay_responses.assemble(kept, streamed=False) == kept


def test_failed_or_unfinished_responses_are_never_kept() -> None:
    stream = ResponsesStream(ASKED, "resp_failed", 7)
    stream.start()
    assert replay_responses.assemble(b"".join(stream.failed("server_error", "boom")), streamed=True) is None
    assert replay_responses.assemble(b"", streamed=True) is None
    _, final = _worker_stream(ASKED, "resp_first")
    kept = json.loads(replay_responses.assemble(final, streamed=True) or b"{}")
    for status in ("failed", "in_progress", "cancelled"):
        assert replay_responses.assemble(json.dumps({**kept, "status": status}).encode(), streamed=False) is None
    assert replay_responses.assemble(b"not json", streamed=False) is None


def test_a_hit_is_a_new_response_to_its_own_request_at_no_cost() -> None:
    _, final = _worker_stream(ASKED, "resp_first")
    kept = replay_responses.assemble(final, streamed=True)
    assert kept is not None
    hit = json.loads(replay_responses.hit_body(kept, AGAIN, response_id="resp_second", created_at=9,
                                               completed_at=10))
    assert (hit["id"], hit["created_at"], hit["completed_at"], hit["status"]) == ("resp_second", 9, 10, "completed")
    assert hit["metadata"] == {"run": "2"} and hit["user"] == "someone"  # this request's settings
    assert [item["id"] for item in hit["output"]] == ["msg_second_0", "fc_second_1"]  # minted from its own id
    assert hit["output"][1]["call_id"] == "call_1" and hit["output"][1]["arguments"] == "{\"a\":1}"
    first = json.loads(kept)
    assert [{**item, "id": None} for item in hit["output"]] == [{**item, "id": None} for item in first["output"]]
    assert hit["usage"] == {**first["usage"], "cost": 0}
    parsed = SDKResponse.model_validate(hit)  # the SDK's own type reads it
    assert parsed.output_text == "Hello"


def test_a_replay_is_the_stream_a_worker_sends_for_the_request() -> None:
    _, final = _worker_stream(ASKED, "resp_first")
    kept = replay_responses.assemble(final, streamed=True)
    assert kept is not None
    replayed = replay_responses.replay(kept, AGAIN, response_id="resp_second", created_at=7, completed_at=10)
    sent, closing = _worker_stream(AGAIN, "resp_second")
    assert replayed[:-1] == sent  # byte for byte, sequence numbers included
    assert [_data(event)["sequence_number"] for event in replayed] == list(range(len(replayed)))
    last, worker_last = _data(replayed[-1]), _data(closing)
    assert last["type"] == worker_last["type"] == "response.completed"
    assert last["response"]["output"] == worker_last["response"]["output"]
    assert last["response"]["usage"] == {**worker_last["response"]["usage"], "cost": 0}
    assert last["response"]["completed_at"] == 10
    assert last["response"] == json.loads(replay_responses.hit_body(kept, AGAIN, response_id="resp_second",
                                                                    created_at=7, completed_at=10))


def test_an_incomplete_response_replays_as_incomplete() -> None:
    _, final = _worker_stream(ASKED, "resp_first", finish="length")
    kept = replay_responses.assemble(final, streamed=True)
    assert kept is not None
    replayed = replay_responses.replay(kept, AGAIN, response_id="resp_second", created_at=7, completed_at=10)
    sent, closing = _worker_stream(AGAIN, "resp_second", finish="length")
    assert replayed[:-1] == sent
    last = _data(replayed[-1])
    assert last["type"] == "response.incomplete" == _data(closing)["type"]
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["completed_at"] is None
    assert {item["status"] for item in last["response"]["output"]} == {"incomplete"}
