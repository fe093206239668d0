"""Golden tests of the Gemini translation, both ways, from the payloads in tests/fixtures/gemini/.

The response and stream fixtures follow recorded gemini-2.5-flash traffic
(field order, usage cumulative on every SSE event, CRLF framing, a
thoughtSignature on the first function call); the request fixture is what the
translation must send for a full tool-calling turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from broker.errors import InvalidRequest, UpstreamError
from broker.wire import (
    ChatRequest,
    EmbeddingRequest,
    chat_request_decoder,
    json_encoder,
)
from workers.providers.gemini import (
    error_from_response,
    estimate_tokens,
    from_embed_response,
    to_embed_request,
)
from workers.providers.gemini_stream import StreamState, on_end, on_event
from workers.providers.gemini_translate import from_upstream, to_upstream
from workers.providers.sse import SSEParser

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def chat(**body: Any) -> ChatRequest:
    return chat_request_decoder.decode(json.dumps({"model": "m", **body}).encode())


def as_json(value: Any) -> Any:
    return json.loads(json_encoder.encode(value))


def test_a_tool_calling_turn_translates_to_the_recorded_gemini_request() -> None:
    req = chat_request_decoder.decode((FIXTURES / "tool_turn.openai.json").read_bytes())
    assert json.loads(to_upstream(req)) == fixture("tool_turn.gemini.json")


def test_consecutive_user_messages_merge_so_roles_alternate() -> None:
    sent = json.loads(to_upstream(chat(messages=[
        {"role": "user", "content": "one"}, {"role": "user", "content": "two"},
        {"role": "assistant", "content": "ok"}, {"role": "user", "content": "three"}])))
    assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
    assert sent["contents"][0]["parts"] == [{"text": "one"}, {"text": "two"}]
    assert "generationConfig" not in sent and "systemInstruction" not in sent


@pytest.mark.parametrize(("url", "mime"), [
    ("https://example.com/cat.png", "image/png"),
    ("https://cdn.example.com/photos/CAT.JPG?w=800#top", "image/jpeg"),
    ("https://example.com/a.webp", "image/webp"),
    ("https://picsum.photos/id/237/200/300", "image/jpeg"),  # no extension: an image_url is an image
    ("https://example.com/render?id=3.7", "image/jpeg"),
])
def test_an_https_image_url_becomes_file_data_with_its_type(url: str, mime: str) -> None:
    sent = json.loads(to_upstream(chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": url}}]}])))
    assert sent["contents"][0]["parts"][1] == {"fileData": {"fileUri": url, "mimeType": mime}}


@pytest.mark.parametrize(("choice", "config"), [
    ("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"}),
])
def test_tool_choice_maps_to_function_calling_modes(choice: str, config: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    sent = json.loads(to_upstream(chat(messages=[{"role": "user", "content": "hi"}], tools=tools, tool_choice=choice)))
    assert sent["toolConfig"] == {"functionCallingConfig": config}
    assert sent["tools"] == [{"functionDeclarations": [{"name": "f"}]}]


def test_json_object_mode_sets_only_the_mime_type() -> None:
    sent = json.loads(to_upstream(chat(messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_object"}, stop="END")))
    assert sent["generationConfig"] == {"responseMimeType": "application/json", "stopSequences": ["END"]}


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]},
     "messages[0].content[0].image_url.url"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]},
     "messages[0].content[0].image_url.url"),
    ({"role": "tool", "tool_call_id": "call_unknown", "content": "15C"}, "messages[0].tool_call_id"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                          "function": {"name": "f", "arguments": "[1, 2]"}}]},
     "messages[0].tool_calls[0].function.arguments"),
])
def test_what_gemini_cannot_take_is_a_400_naming_the_field(message: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        to_upstream(chat(messages=[message, {"role": "user", "content": "go"}]))
    assert info.value.param == param


def test_responses_translate_to_openai_completions() -> None:
    for name in ("response_text", "response_tool_calls"):
        completion = from_upstream((FIXTURES / f"{name}.gemini.json").read_bytes(), model="gemini-2.5-flash")
        assert as_json(completion) == fixture(f"{name}.openai.json"), name


def test_a_blocked_prompt_is_a_content_filter_finish_with_empty_content() -> None:
    completion = from_upstream((FIXTURES / "response_blocked_prompt.gemini.json").read_bytes(), model="g")
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == ""
    assert completion.usage is not None and completion.usage.prompt_tokens == 12


@pytest.mark.parametrize("reason", ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII"])
def test_filtered_candidates_finish_with_content_filter(reason: str) -> None:
    body = json.dumps({"candidates": [{"finishReason": reason, "index": 0}]}).encode()
    assert from_upstream(body, model="g").choices[0].finish_reason == "content_filter"


def replay(transcript: bytes, slice_size: int) -> list[Any]:
    parser, state, chunks = SSEParser(), StreamState("gemini-2.5-flash"), []
    for start in range(0, len(transcript), slice_size):
        for event in parser.feed(transcript[start:start + slice_size]):
            chunks += on_event(event.data, state)
    chunks += on_end(state)
    return [{k: v for k, v in as_json(c).items() if k in ("choices", "usage")} for c in chunks]


@pytest.mark.parametrize("slice_size", [1, 7, 1 << 20])
def test_the_recorded_stream_becomes_openai_chunks_however_the_bytes_are_sliced(slice_size: int) -> None:
    expected = fixture("stream_function_call.chunks.json")
    for choice in (c for chunk in expected for c in chunk["choices"]):
        choice.setdefault("logprobs", None)
    transcript = (FIXTURES / "stream_function_call.sse").read_bytes()
    assert b"\r\n\r\n" in transcript
    assert replay(transcript, slice_size) == expected
    assert replay(transcript.replace(b"\r\n", b"\n"), slice_size) == expected  # LF framing too


def test_a_stream_that_ends_before_a_finish_reason_is_an_error() -> None:
    transcript = (FIXTURES / "stream_function_call.sse").read_bytes().split(b"\r\n\r\n")
    with pytest.raises(UpstreamError, match="before the answer finished"):
        replay(b"\r\n\r\n".join(transcript[:2]) + b"\r\n\r\n", 64)


def test_an_error_event_inside_the_stream_raises() -> None:
    state = StreamState("g")
    with pytest.raises(UpstreamError, match="INTERNAL"):
        on_event(b'{"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}', state)


def test_a_429_keeps_its_status_and_takes_the_retry_delay_from_retry_info() -> None:
    err = error_from_response(429, (FIXTURES / "error_429.json").read_bytes(), {})
    assert (err.status, err.retryable, err.retry_after_s, err.code) == (429, True, 26.0, "rate_limit_exceeded")
    assert "RESOURCE_EXHAUSTED" in err.message


def test_a_rejected_api_key_is_our_misconfiguration_not_the_clients_400() -> None:
    err = error_from_response(400, (FIXTURES / "error_api_key_invalid.json").read_bytes(), {})
    assert err.status == 502


@pytest.mark.parametrize(("status", "google", "expected"), [
    (400, "INVALID_ARGUMENT", 400), (403, "PERMISSION_DENIED", 502), (404, "NOT_FOUND", 404),
    (500, "INTERNAL", 502), (503, "UNAVAILABLE", 503), (504, "DEADLINE_EXCEEDED", 504),
])
def test_google_statuses_map_to_gateway_statuses(status: int, google: str, expected: int) -> None:
    body = json.dumps({"error": {"code": status, "message": "m", "status": google}}).encode()
    assert error_from_response(status, body, {}).status == expected


def test_embeddings_batch_names_the_model_per_request_and_estimates_tokens() -> None:
    req = msgspec.json.decode(b'{"model": "e", "input": ["hello world", "a"], "dimensions": 8}', type=EmbeddingRequest)
    body = json.loads(to_embed_request(req.texts(), model="gemini-embedding-001", dimensions=8))
    assert body == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hello world"}]}, "outputDimensionality": 8},
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 8},
    ]}
    assert estimate_tokens(req.texts()) == 3 + 1
    assert from_embed_response(b'{"embeddings": [{"values": [0.5, -1]}]}', 1) == [[0.5, -1.0]]
    with pytest.raises(UpstreamError):
        from_embed_response(b'{"embeddings": []}', 1)
