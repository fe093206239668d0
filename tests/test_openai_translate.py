"""Golden tests of the OpenAI-compatible translation (workers/providers/openai_translate.py, broker/routing/profiles.py).

Fixtures in tests/fixtures/openai/: `request_<profile>.json` pair a client request
with the exact upstream body for that server; `stream_<name>.sse` are upstream
streams (OpenAI's from openai-python's recorded replay fixtures, the others in
the shapes PROTOCOLS §7 documents) with their expected chunks in
`stream_<name>.json`, fed through the real SSE parser in several slicings and
then through the openai SDK's own stream accumulator; `error_<name>.json` are
upstream error bodies and the UpstreamError each must become.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from api.decode import decode_body
from broker.errors import UpstreamError
from broker.routing.profiles import PROFILES
from broker.wire import chat_request_decoder, embedding_request_decoder, json_encoder
from workers.providers.openai_translate import (
    StreamRepair,
    chat_chunk,
    error_from_response,
    shape_embeddings,
    shape_request,
)
from workers.providers.sse import SSEParser

FIXTURES = Path(__file__).parent / "fixtures" / "openai"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def as_json(value: Any) -> Any:
    return json.loads(json_encoder.encode(value))


# ---------------------------------------------------------------- requests

REQUEST_CASES = [(path.name, i) for path in sorted(FIXTURES.glob("request_*.json"))
                 for i in range(len(fixture(path.name)["cases"]))]


@pytest.mark.parametrize(("name", "index"), REQUEST_CASES)
def test_request_becomes_the_exact_upstream_body_for_its_profile(name: str, index: int) -> None:
    doc = fixture(name)
    case = doc["cases"][index]
    req = chat_request_decoder.decode(json.dumps(case["request"]))
    body = shape_request(req, model=case["model"], stream=case["stream"], stream_usage=case["stream_usage"],
                         profile=PROFILES[doc["profile"]])
    assert json.loads(body) == case["upstream"], case["name"]


def test_extras_go_top_level_but_never_override_a_field_the_broker_set() -> None:
    req = decode_body(json.dumps({"model": "public", "messages": [{"role": "user", "content": "hi"}],
                                  "top_k": 5, "guided_choice": ["a", "b"],
                                  "extra_body": {"model": "sneaky", "priority": 3}}).encode(), chat_request_decoder)
    body = json.loads(shape_request(req, model="served-id", stream=False, stream_usage=True,
                                    profile=PROFILES["vllm"]))
    assert body == {"model": "served-id", "messages": [{"role": "user", "content": "hi"}], "top_k": 5,
                    "guided_choice": ["a", "b"], "priority": 3}


def test_mistral_embeddings_know_dimensions_as_output_dimension_and_take_no_user() -> None:
    req = embedding_request_decoder.decode(json.dumps(
        {"model": "public", "input": ["a", "b"], "dimensions": 256, "user": "u-1", "encoding_format": "base64"}))
    body = json.loads(shape_embeddings(req, model="codestral-embed", profile=PROFILES["mistral"]))
    # Floats from the upstream whatever the client asked: the worker encodes base64 itself.
    assert body == {"model": "codestral-embed", "input": ["a", "b"], "output_dimension": 256,
                    "encoding_format": "float"}


def test_image_parts_and_tool_turns_are_forwarded_byte_for_byte() -> None:
    case = fixture("request_generic.json")["cases"][0]
    req = chat_request_decoder.decode(json.dumps(case["request"]))
    body = json.loads(shape_request(req, model="m", stream=False, stream_usage=True, profile=PROFILES["generic"]))
    assert body["messages"] == case["request"]["messages"]  # data URL, detail, text: untouched
    assert body["tools"] == case["request"]["tools"] and body["response_format"] == {"type": "json_object"}


# ---------------------------------------------------------------- streams


def slicings(raw: bytes) -> dict[str, list[bytes]]:
    crlf = raw.replace(b"\n", b"\r\n")
    return {
        "whole": [raw],
        "bytes": [raw[i:i + 1] for i in range(len(raw))],
        "7": [raw[i:i + 7] for i in range(0, len(raw), 7)],
        "64": [raw[i:i + 64] for i in range(0, len(raw), 64)],
        "lines": [line + b"\n" for line in raw.split(b"\n")][:-1],
        "crlf-whole": [crlf],
        "crlf-3": [crlf[i:i + 3] for i in range(0, len(crlf), 3)],
    }


class Run:
    def __init__(self) -> None:
        self.chunks: list[Any] = []
        self.error: UpstreamError | None = None
        self.done = False


def run_stream(pieces: list[bytes]) -> Run:
    """What the adapter's stream loop does (workers/providers/openai.py `_events`), without the HTTP."""
    out, parser, repair = Run(), SSEParser(), StreamRepair()
    try:
        for piece in pieces:
            for event in parser.feed(piece):
                if event.data.startswith(b"[DONE]"):
                    out.done = True
                    return out
                out.chunks.append(as_json(repair(chat_chunk(event.data))))
    except UpstreamError as exc:
        out.error = exc
    return out


def events(name: str) -> list[Any]:
    lines = (FIXTURES / name).read_text().split("\n")
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def sdk_final(chunks: list[Any]) -> Any:
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion().choices[0]


STREAMS = sorted(p.stem for p in FIXTURES.glob("stream_*.sse"))


@pytest.mark.parametrize("slicing", list(slicings(b"")))
@pytest.mark.parametrize("name", STREAMS)
def test_stream_transcript_becomes_the_recorded_chunks_however_sliced(name: str, slicing: str) -> None:
    expected = fixture(f"{name}.json")
    result = run_stream(slicings((FIXTURES / f"{name}.sse").read_bytes())[slicing])
    if expected.get("passthrough"):
        # OpenAI's own streams cross the broker losslessly: every event is one chunk, field for field.
        assert result.chunks == events(f"{name}.sse")
    else:
        assert result.chunks == expected["chunks"]
    if expected["error"] is None:
        assert result.error is None and result.done
    else:
        assert result.error is not None and not result.done
        assert (result.error.message, result.error.retryable, result.error.code) == (
            expected["error"]["message"], expected["error"]["retryable"], expected["error"]["code"])


def test_recorded_parallel_tool_calls_accumulate_into_exactly_two_calls() -> None:
    final = sdk_final(run_stream([(FIXTURES / "stream_openai_parallel_tools.sse").read_bytes()]).chunks)
    assert final.finish_reason == "tool_calls" and final.message.role == "assistant"
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in final.message.tool_calls or []] == [
        ("call_lQnnsesjFMWMQ5IeWPHzR4th", "GetWeatherArgs", {"city": "Edinburgh", "country": "UK", "units": "c"}),
        ("call_2xjOUgaCdiwAcl9ZBL9LyMUU", "get_stock_price", {"ticker": "AAPL", "exchange": "NASDAQ"})]


def test_recorded_single_tool_call_and_text_accumulate_as_openai_sent_them() -> None:
    call = sdk_final(run_stream([(FIXTURES / "stream_openai_tool_call.sse").read_bytes()]).chunks)
    assert [(c.id, c.function.name) for c in call.message.tool_calls or []] == [
        ("call_c91SqDXlYFuETYv8mUHzz6pp", "GetWeatherArgs")]
    assert json.loads((call.message.tool_calls or [])[0].function.arguments) == {
        "city": "Edinburgh", "country": "GB", "units": "c"}
    text = sdk_final(run_stream([(FIXTURES / "stream_openai_text.sse").read_bytes()]).chunks)
    assert text.message.content == "I'm unable to provide real-time updates." and text.finish_reason == "stop"


def test_usage_chunk_keeps_its_details() -> None:
    chunks = run_stream([(FIXTURES / "stream_openai_tool_call.sse").read_bytes()]).chunks
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 76, "completion_tokens": 24, "total_tokens": 100,
        "completion_tokens_details": {"reasoning_tokens": 0}}


def test_ollama_parallel_calls_reach_the_sdk_as_two_calls() -> None:
    final = sdk_final(run_stream([(FIXTURES / "stream_ollama_parallel_tools.sse").read_bytes()]).chunks)
    assert final.message.role == "assistant"
    assert [c.id for c in final.message.tool_calls or []] == ["call_y8g2kq1m", "call_3vx0c7tn"]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("error_*.json")))
def test_error_body_becomes_the_right_upstream_error(name: str) -> None:
    case = fixture(name)
    err = error_from_response(case["status"], case["body"].encode(), case["headers"])
    expected = case["expected"]
    assert isinstance(err, UpstreamError)
    assert {"status": err.status, "retryable": err.retryable, "code": err.code, "param": err.param,
            "retry_after_s": err.retry_after_s, "message": err.message} == expected, case["source"]


def test_an_echoed_key_never_survives_into_the_message() -> None:
    case = fixture("error_echoed_key.json")
    err = error_from_response(case["status"], case["body"].encode(), case["headers"])
    assert "0123456789abcdef" not in err.message and "0123456789abcdef" not in json_encoder.encode(err.to_info()).decode()


def test_an_upstream_number_beyond_64_bits_is_an_upstream_error_not_a_broken_reply() -> None:
    # It would pass decoding as a Python bigint and then break the worker's msgpack reply (and every
    # other job's chunks in the same flush): refused where the upstream's body is read.
    from broker.errors import UpstreamError
    from workers.providers.openai_translate import chat_completion

    body = (b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":'
            b'{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":'
            b'123456789012345678901234567890,"completion_tokens":1,"total_tokens":2}}')
    with pytest.raises(UpstreamError) as info:
        chat_completion(body)
    assert "usage.prompt_tokens" in info.value.message
