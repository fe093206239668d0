"""Golden tests of the Responses API served over Chat (broker/inbound/responses*.py).

Fixtures in tests/fixtures/responses/ pair an input with the exact expected output. What the
client reads is checked with the official `openai` SDK: `to_response` output through its
`Response` model and `responses.parse`, stream events through `client.responses.stream()` on a
mock transport, so its own SSE decoder and stream helper rebuild the response; and what the SDK
sends (its parse request, its replayed output items) goes back through our decoder and `to_chat`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import openai
import pydantic
import pytest

from broker.errors import InvalidRequest
from broker.inbound.responses import to_chat
from broker.inbound.responses_output import to_response
from broker.inbound.responses_stream import ResponsesStream
from broker.wire import (
    ChatChunk,
    ChatCompletion,
    Usage,
    chat_request_decoder,
    json_encoder,
)
from broker.wire.responses import (
    ForeignItem,
    FunctionCallItem,
    Response,
    ResponsesRequest,
    decode_items,
    encoder,
    responses_request_decoder,
)
from tests.chat_answers import TEXT_THEN_PARALLEL_CALLS, call, chunk, completion, events

FIXTURES = Path(__file__).parent / "fixtures" / "responses"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def request(body: dict[str, Any]) -> ResponsesRequest:
    return responses_request_decoder.decode(json.dumps({"model": "m", "input": "hi", **body}))


def chat(body: dict[str, Any], history: Any = ()) -> Any:
    return json.loads(json_encoder.encode(to_chat(request(body), history)))


def client(handler: Callable[[httpx2.Request], httpx2.Response]) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url="http://broker.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def sdk_stream(frames: list[bytes], *, slice_size: int | None = None) -> tuple[list[Any], Any]:
    """The SDK's own `responses.stream()` over our bytes (and the `[DONE]` the API adds), sliced as given:
    the events it yields and its final response."""
    raw = b"".join(frames) + b"data: [DONE]\n\n"

    def pieces() -> Iterator[bytes]:
        size = slice_size or len(raw)
        yield from (raw[i:i + size] for i in range(0, len(raw), size))

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=pieces())

    with client(handler).responses.stream(model="m", input="x") as stream:
        seen = list(stream)
        return seen, stream.get_final_response()


def unparsed(value: Any) -> Any:
    """A ParsedResponse as the plain Response it was parsed from (the SDK adds `parsed`, `parsed_arguments`)."""
    if isinstance(value, dict):
        return {k: unparsed(v) for k, v in value.items() if k not in ("parsed", "parsed_arguments")}
    return [unparsed(v) for v in value] if isinstance(value, list) else value
def streamed(chunks: list[ChatChunk], usage: Usage | None = None, body: dict[str, Any] | None = None,
             ) -> tuple[ResponsesStream, list[bytes]]:
    stream = ResponsesStream(request(body or {}), "resp_s1", 1760000000)
    frames = stream.start() + [f for c in chunks for f in stream.on_chunk(c)] + stream.finish(usage, completed_at=1760000009)
    return stream, frames


# ---------------------------------------------------------------- request


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("request_*.json")))
def test_responses_request_becomes_the_recorded_chat_request(name: str) -> None:
    case = fixture(name)
    out = to_chat(responses_request_decoder.decode(json.dumps(case["responses"])))
    assert json.loads(json_encoder.encode(out)) == case["chat"]
    chat_request_decoder.decode(json_encoder.encode(out))  # and our own Chat edge would accept it


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    assert chat({"instructions": "Be brief."}) == {"model": "m", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("choice", "tool_choice", "tools"), [
    ("required", "required", ["f", "g"]),
    ({"type": "function", "name": "g"}, {"type": "function", "function": {"name": "g"}}, ["f", "g"]),
    ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "g"}]}, "required", ["g"]),
])
def test_tool_choice_maps_to_chat(choice: Any, tool_choice: Any, tools: list[str]) -> None:
    out = chat({"tools": [{"type": "function", "name": n, "parameters": {}} for n in ("f", "g")],
                "tool_choice": choice})
    assert out["tool_choice"] == tool_choice and [t["function"]["name"] for t in out["tools"]] == tools


def test_json_object_and_history_from_previous_response_id_come_first() -> None:
    history = request({"input": [{"role": "user", "content": "first"},
                                 {"type": "message", "role": "assistant", "content": "answer"}]}).items()
    out = chat({"text": {"format": {"type": "json_object"}}, "instructions": "new"}, history)
    assert out["response_format"] == {"type": "json_object"}
    assert out["messages"] == [{"role": "system", "content": "new"}, {"role": "user", "content": "first"},
                               {"role": "assistant", "content": "answer"}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "function", "name": "f"}, {"type": "web_search_preview"}]}, "tools[1].type"),
    ({"tools": [{"type": "mcp", "server_label": "s", "server_url": "https://mcp"}]}, "tools[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"input": [{"id": "msg_1"}]}, "input[0]"),  # an item reference's `type` is optional
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"input": []}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}, "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x/a.pdf"}]}]},
     "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}]}, "input[0].content[0]"),
    ({"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "https://x"}]}]},
     "input[0].content[0]"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].output[0]"),
    ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"tools": [{"type": "function", "name": "f"}],
      "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "g"}]}},
     "tool_choice.tools[0]"),
])
def test_what_chat_cannot_carry_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat(body)
    assert info.value.param == param


def test_inbound_bodies_are_lenient_but_what_is_read_is_validated() -> None:
    body: dict[str, Any] = {"model": "m", "input": "x", "context_management": [], "moderation": {"model": "x"}}
    assert responses_request_decoder.decode(json.dumps(body)).model == "m"
    cases: list[tuple[Any, str]] = [
        ({"max_output_tokens": 0}, "$.max_output_tokens"), ({"temperature": 2.5}, "$.temperature"),
        ({"top_p": 2**64}, "$.top_p"), ({"metadata": {str(i): "v" for i in range(17)}}, "$.metadata"),
        ({"tools": [{"type": "function"}]}, "$.tools[0]"), ({"tools": [{"type": "function", "name": "a b"}]},
                                                             "$.tools[0].name"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "$.text.format"),
        ({"tool_choice": {"type": "function"}}, "$.tool_choice"), ({"tool_choice": "any"}, "$.tool_choice")]
    for bad, path in cases:
        with pytest.raises(msgspec.ValidationError, match=path.replace("$", r"\$").replace("[", r"\[")):
            responses_request_decoder.decode(json.dumps({**body, **bad}))


@pytest.mark.parametrize(("item", "field"), [
    ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[1].call_id"),
    ({"role": "user", "content": [{"type": "input_text", "text": 3}]}, "input[1].content[0].text"),
    ({"role": "critic", "content": "x"}, "input[1].role"),
    ("text", "input[1]"),
])
def test_an_item_that_cannot_be_read_names_its_path_first_where_the_api_reads_it(item: Any, field: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=rf"^`{re.escape(field)}`: "):
        responses_request_decoder.decode(json.dumps({"model": "m", "input": [{"role": "user", "content": "x"}, item]}))


def test_an_item_only_openai_runs_is_kept_as_sent_and_refused_by_name_when_translated() -> None:
    """A web_search_call (or any type we do not model) reads as a ForeignItem, written back byte for byte for
    a deployment that speaks the Responses API; the Chat translation refuses it, naming the item's type."""
    item = {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}}
    req = responses_request_decoder.decode(json.dumps({"model": "m", "input": [{"role": "user", "content": "x"}, item]}))
    foreign = req.items()[1]
    assert isinstance(foreign, ForeignItem) and foreign.type == "web_search_call"
    assert json.loads(encoder.encode(req.items())) == [{"type": "message", "role": "user", "content": "x"}, item]
    assert decode_items(encoder.encode(req.items())) == req.items()
    with pytest.raises(InvalidRequest, match="'web_search_call' items") as refused:
        to_chat(req)
    assert refused.value.param == "input[1].type"


def test_requests_and_responses_survive_msgpack_as_jobs_and_the_store_keep_them() -> None:
    req = responses_request_decoder.decode(json.dumps(fixture("request_agents_sdk_turn.json")["responses"]))
    again = msgspec.msgpack.decode(msgspec.msgpack.encode(req), type=ResponsesRequest)
    assert again == req and isinstance(again.items()[3], FunctionCallItem)
    case = fixture("response_text_and_tool_calls.json")
    out = to_response(msgspec.json.decode(json.dumps(case["chat"]), type=ChatCompletion), req, response_id="r",
                      created_at=1)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(out), type=Response) == out


# ---------------------------------------------------------------- response


def test_chat_completion_becomes_the_recorded_response_the_sdk_accepts() -> None:
    case = fixture("response_text_and_tool_calls.json")
    out = to_response(msgspec.json.decode(json.dumps(case["chat"]), type=ChatCompletion),
                      responses_request_decoder.decode(json.dumps(case["request"])),
                      response_id="abc", created_at=1760000000, completed_at=1760000003)
    body = json.loads(encoder.encode(out))
    assert body == case["response"]
    assert openai.types.responses.Response.model_validate(body).to_dict() == body


@pytest.mark.parametrize(("finish", "status", "reason"), [
    ("stop", "completed", None), ("tool_calls", "completed", None), (None, "completed", None),
    ("length", "incomplete", "max_output_tokens"), ("content_filter", "incomplete", "content_filter"),
    ("something_new", "completed", None),
])
def test_finish_reasons_map_to_statuses(finish: str | None, status: str, reason: str | None) -> None:
    out = to_response(completion({"content": "x"}, finish), request({}), response_id="r", created_at=1, completed_at=2)
    assert out.status == status and (out.incomplete_details and out.incomplete_details.reason) == reason
    assert out.output[0].status == status and out.completed_at == (2 if status == "completed" else None)


def test_refusals_and_calls_without_an_id_and_no_usage() -> None:
    out = to_response(completion({"refusal": "I can't.", "tool_calls": [
        {"id": "", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}), request({}),
        response_id="resp_9", created_at=1)
    body = json.loads(encoder.encode(out))
    assert body["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't."}]
    assert body["output"][1]["call_id"] == "call_9_1" and body["usage"] is None
    assert openai.types.responses.Response.model_validate(body).output[1].type == "function_call"


class Weather(pydantic.BaseModel):
    city: str
    celsius: int


def test_the_sdks_parse_request_translates_and_its_answer_parses() -> None:
    sent: list[Any] = []

    def handler(http: httpx2.Request) -> httpx2.Response:
        req = responses_request_decoder.decode(http.content)
        sent.append(to_chat(req))
        answer = completion({"content": '{"city": "Paris", "celsius": 18}'})
        body = encoder.encode(to_response(answer, req, response_id="p", created_at=1))
        openai.types.responses.Response.model_validate_json(body)  # the echoed json_schema format too
        return httpx2.Response(200, content=body)

    parsed = client(handler).responses.parse(model="m", input="weather?", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris", celsius=18)
    assert sent[0].response_format["type"] == "json_schema"
    assert sent[0].response_format["json_schema"]["name"] == "Weather"
    assert sent[0].response_format["json_schema"]["strict"] is True


def test_function_call_round_trip_replays_the_sdks_output_items_as_input() -> None:
    """The SDK's documented loop: `input += response.output`, then each call's output, then create again."""
    requests: list[ResponsesRequest] = []

    def handler(http: httpx2.Request) -> httpx2.Response:
        requests.append(responses_request_decoder.decode(http.content))
        answer = completion({"content": "Let me check.", "tool_calls": [
            {"id": "call_up_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            "tool_calls")
        return httpx2.Response(200, content=encoder.encode(to_response(answer, requests[-1], response_id="t1",
                                                                       created_at=1)))

    sdk = client(handler)
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": False}]
    history: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = sdk.responses.create(model="m", input=history, tools=tools)
    history += first.output
    history.append({"type": "function_call_output", "call_id": first.output[1].call_id, "output": "18C"})  # type: ignore[union-attr]
    sdk.responses.create(model="m", input=history, tools=tools)
    assert json.loads(json_encoder.encode(to_chat(requests[1])))["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_up_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_up_1", "content": "18C"}]


# ---------------------------------------------------------------- stream


@pytest.mark.parametrize("slice_size", [None, 1, 7])
def test_the_sdk_rebuilds_text_and_parallel_tool_calls_from_our_stream(slice_size: int | None) -> None:
    stream, frames = streamed(TEXT_THEN_PARALLEL_CALLS)
    seen, final = sdk_stream(frames, slice_size=slice_size)
    assert unparsed(final.to_dict()) == json.loads(encoder.encode(stream.response))
    assert final.output_text == "Checking both." and final.status == "completed"
    assert [(o.type, o.id, getattr(o, "call_id", None)) for o in final.output] == [
        ("message", "msg_s1_0", None), ("function_call", "fc_s1_1", "call_1"), ("function_call", "fc_s1_2", "call_2")]
    assert [o.arguments for o in final.output[1:]] == ['{"city": "Paris"}', '{"city": "Tokyo"}']
    assert final.usage is not None and (final.usage.input_tokens, final.usage.input_tokens_details.cached_tokens,
                                        final.usage.output_tokens) == (500, 100, 30)
    assert [e.snapshot for e in seen if e.type == "response.output_text.delta"] == ["Checking ", "Checking both."]


def test_stream_events_are_in_order_numbered_and_indexed_densely() -> None:
    got = events(streamed(TEXT_THEN_PARALLEL_CALLS)[1])
    assert [e["type"].removeprefix("response.") for e in got] == [
        "created", "in_progress",
        "output_item.added", "content_part.added", "output_text.delta", "output_text.delta",
        "output_item.added", "function_call_arguments.delta",  # call_1 opens (no arguments yet: no delta)
        "output_item.added", "function_call_arguments.delta", "function_call_arguments.delta",
        "function_call_arguments.delta",
        "output_text.done", "content_part.done", "output_item.done",
        "function_call_arguments.done", "output_item.done", "function_call_arguments.done", "output_item.done",
        "completed"]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    assert got[0]["response"]["status"] == "in_progress" and got[0]["response"]["output"] == []
    assert got[2]["item"] == {"type": "message", "id": "msg_s1_0", "role": "assistant", "content": [],
                              "status": "in_progress"}
    assert got[3]["part"] == {"type": "output_text", "text": "", "annotations": []}
    assert got[4] == {"type": "response.output_text.delta", "sequence_number": 4, "item_id": "msg_s1_0",
                      "output_index": 0, "content_index": 0, "delta": "Checking ", "logprobs": []}
    assert got[6]["item"] == {"type": "function_call", "id": "fc_s1_1", "call_id": "call_1", "name": "get_weather",
                              "arguments": "", "status": "in_progress"}
    assert [e["output_index"] for e in got if "function_call_arguments" in e["type"]] == [1, 2, 1, 2, 1, 2]
    assert got[15] == {"type": "response.function_call_arguments.done", "sequence_number": 15, "item_id": "fc_s1_1",
                       "output_index": 1, "name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert got[-1]["response"]["completed_at"] == 1760000009 and len(got[-1]["response"]["output"]) == 3


def test_a_stream_cut_at_max_output_tokens_ends_incomplete() -> None:
    stream, frames = streamed([chunk({"content": "Once upon"}), chunk({}, "length")], body={"max_output_tokens": 2})
    got = events(frames)
    assert got[-1]["type"] == "response.incomplete" and got[-2]["item"]["status"] == "incomplete"
    assert got[-1]["response"] == json.loads(encoder.encode(stream.response))
    assert got[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert got[-1]["response"]["completed_at"] is None and got[-1]["response"]["max_output_tokens"] == 2
    openai.types.responses.Response.model_validate(got[-1]["response"])
    with pytest.raises(RuntimeError, match="response.completed"):  # the SDK's helper only ends on completed
        sdk_stream(frames)


def test_a_refusal_streams_as_its_own_part() -> None:
    _, frames = streamed([chunk({"refusal": "I can't "}), chunk({"refusal": "help."}), chunk({}, "stop")])
    got = events(frames)
    assert [e["type"] for e in got if "refusal" in e["type"]] == [
        "response.refusal.delta", "response.refusal.delta", "response.refusal.done"]
    assert sdk_stream(frames)[1].output[0].content == [
        openai.types.responses.ResponseOutputRefusal(type="refusal", refusal="I can't help.")]


def test_a_server_that_numbers_every_call_zero_and_sends_no_ids() -> None:
    chunks = [chunk(call(0, "a", "f", "{}")), chunk(call(0, "b", "g", "{}")), chunk({}, "stop")]
    _, frames = streamed(chunks, Usage(prompt_tokens=10, completion_tokens=3, total_tokens=13))
    final = sdk_stream(frames)[1]
    assert [(o.name, o.call_id) for o in final.output] == [("f", "a"), ("g", "b")]
    assert final.usage is not None and final.usage.total_tokens == 13
    no_id = streamed([chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]})])[0]
    assert no_id.response.output[0].call_id == "call_s1_0"  # type: ignore[union-attr]


def test_streamed_and_whole_answers_are_the_same_response() -> None:
    stream, _ = streamed(TEXT_THEN_PARALLEL_CALLS)
    whole = to_response(completion({"content": "Checking both.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'}}]},
        "tool_calls", TEXT_THEN_PARALLEL_CALLS[-1].usage), request({}), response_id="resp_s1", created_at=1760000000,
        completed_at=1760000009)
    assert encoder.encode(stream.response) == encoder.encode(whole)


def test_an_empty_stream_is_still_a_whole_response_and_late_calls_do_nothing() -> None:
    stream, frames = streamed([])
    assert [e["type"] for e in events(frames)] == ["response.created", "response.in_progress", "response.completed"]
    assert sdk_stream(frames)[1].output == []
    assert stream.finish() == [] and stream.on_chunk(chunk({"content": "late"})) == [] and stream.failed("x", "y") == []


def test_failure_after_the_200_sends_the_error_both_ways_then_response_failed() -> None:
    stream = ResponsesStream(request({}), "resp_f", 1)
    frames = stream.start() + stream.on_chunk(chunk({"content": "par"}))
    frames += stream.failed("rate_limit_exceeded", "Upstream is busy", error_type="rate_limit_exceeded")
    got = events(frames)
    assert got[-2] == {"type": "error", "sequence_number": 5, "code": "rate_limit_exceeded",
                       "message": "Upstream is busy", "param": None,
                       "error": {"type": "rate_limit_exceeded", "code": "rate_limit_exceeded",
                                 "message": "Upstream is busy", "param": None}}
    failed = got[-1]["response"]
    assert got[-1]["type"] == "response.failed" and got[-1]["sequence_number"] == 6
    assert failed["status"] == "failed" and failed["error"] == {"code": "rate_limit_exceeded",
                                                                "message": "Upstream is busy"}
    assert failed["output"][0]["status"] == "incomplete" and failed["output"][0]["content"][0]["text"] == "par"
    openai.types.responses.Response.model_validate(failed)
    with pytest.raises(openai.APIError, match="Upstream is busy") as info:
        sdk_stream(frames)
    assert info.value.code == "rate_limit_exceeded"


def test_text_deltas_and_the_opening_events_are_the_bytes_encode_event_writes() -> None:
    """The stream writes its most frequent events from templates (broker/inbound/responses_stream.py):
    the same bytes as the Structs encoded whole, quotes, escapes and all."""
    from broker.wire.responses_events import OutputTextDelta, ResponseCreated, ResponseInProgress, encode_event

    req = responses_request_decoder.decode(json.dumps({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {}}]}))
    stream = ResponsesStream(req, "resp_abc", 7)
    opening = stream.start()
    assert opening == [encode_event(ResponseCreated(response=stream.response, sequence_number=0)),
                       encode_event(ResponseInProgress(response=stream.response, sequence_number=1))]
    pieces = ["Hel", 'lo "quoted"\n', "\u00e9\u4e2d\U0001f600", "\\ and \u0000"]
    frames = [frame for piece in pieces for frame in stream.on_chunk(chunk({"content": piece}))]
    deltas = [f for f in frames if f.startswith(b"event: response.output_text.delta")]
    assert deltas == [encode_event(OutputTextDelta(item_id=stream.response.output[0].id, output_index=0,  # type: ignore[arg-type]
                                                   content_index=0, delta=piece, sequence_number=n))
                      for piece, n in zip(pieces, (4, 5, 6, 7))]
    done = events(stream.on_chunk(chunk({}, finish="stop")) + stream.finish())
    assert done[-1]["response"]["output"][0]["content"][0]["text"] == "".join(pieces)
