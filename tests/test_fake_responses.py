"""The fake Responses upstream refuses what OpenAI refuses and streams what OpenAI streams, so a
native pass-through bug in the broker shows up as the error it would be against api.openai.com."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response as SdkResponse

from tests.fakes.openai_upstream import UpstreamServer

KEY = "sk-test-0123456789abcdef"
WEATHER = {"type": "function", "name": "get_weather", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
THINKING = {"effort": "low", "summary": "auto"}
ENCRYPTED = ["reasoning.encrypted_content"]


@pytest.fixture(scope="module")
def server() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=KEY) as s:
        yield s


@pytest.fixture
def client(server: UpstreamServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0, timeout=5) as c:
        yield c


def post(server: UpstreamServer, body: dict[str, Any], path: str = "/v1/responses",
         headers: dict[str, str] | None = None) -> httpx.Response:
    base = server.base_url.removesuffix("/v1")
    return httpx.post(base + path, json=body, headers={"authorization": f"Bearer {KEY}"} if headers is None
                      else headers, timeout=5)


def ok(server: UpstreamServer, **body: Any) -> dict[str, Any]:
    r = post(server, {"model": "fake-model", **body})
    assert r.status_code == 200, r.text
    return SdkResponse.model_validate(r.json()).model_dump(mode="json", exclude_unset=True)


def refused(server: UpstreamServer, status: int = 400, **body: Any) -> dict[str, Any]:
    r = post(server, {"model": "fake-model", **body})
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.split("\n\n"):
        if block:
            name, data = block.split("\n")
            out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


# ---- answers ----


def test_plain_answer_is_a_whole_response_the_sdk_parses(client: openai.OpenAI, server: UpstreamServer) -> None:
    done = client.responses.create(model="fake-model@b", input="hello there world")
    assert done.id.startswith("resp_") and done.object == "response" and done.model == "fake-model@b"
    assert done.status == "completed" and done.error is None and done.background is False
    assert done.output_text == "native answer: hello there world"
    assert done.usage is not None and done.usage.input_tokens == 3 and done.usage.output_tokens == 5
    assert done.usage.total_tokens == 8 and done.usage.output_tokens_details.reasoning_tokens == 0
    raw = post(server, {"model": "fake-model", "input": "hi"}).json()
    SdkResponse.model_validate(raw)  # every required field present, every type right
    assert {"completed_at", "incomplete_details", "instructions", "previous_response_id", "store",
            "truncation", "max_output_tokens"} <= raw.keys() and "output_text" not in raw


def test_reasoning_comes_first_with_summary_and_seal_only_when_asked(server: UpstreamServer) -> None:
    bare = ok(server, input="why", reasoning={"effort": "low"})
    assert bare["output"][0]["summary"] == [] and "encrypted_content" not in bare["output"][0]
    assert bare["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    full = ok(server, input="why", reasoning=THINKING, include=ENCRYPTED)
    rs = full["output"][0]
    assert rs["id"].startswith("rs_") and rs["summary"] == [{"type": "summary_text", "text": "Thinking about why"}]
    assert rs["encrypted_content"] and full["output"][1]["type"] == "message"


def test_web_search_calls_then_cites_example_com(server: UpstreamServer) -> None:
    out = ok(server, input="tallest tower", tools=[{"type": "web_search_preview"}])["output"]
    assert out[0]["type"] == "web_search_call" and out[0]["status"] == "completed"
    assert out[0]["action"] == {"type": "search", "query": "tallest tower"}
    part = out[1]["content"][0]
    [cite] = part["annotations"]
    assert cite["type"] == "url_citation" and cite["url"].startswith("https://example.com/")
    assert part["text"][cite["start_index"]:cite["end_index"]] == "example.com"


def test_max_output_tokens_cuts_the_text_to_an_incomplete_response(server: UpstreamServer) -> None:
    done = ok(server, input=" ".join(f"w{i}" for i in range(30)), max_output_tokens=16)
    assert done["status"] == "incomplete" and done["incomplete_details"] == {"reason": "max_output_tokens"}
    assert len(done["output"][0]["content"][0]["text"].split()) == 16 and done["output"][0]["status"] == "incomplete"
    error = refused(server, input="hi", max_output_tokens=5)
    assert (error["param"], error["code"]) == ("max_output_tokens", "integer_below_min_value")


# ---- request rules ----


def test_model_is_required_and_items_must_be_of_a_known_type(server: UpstreamServer) -> None:
    r = post(server, {"input": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert ok(server, input=[{"role": "user", "content": "no type field"}])["status"] == "completed"
    error = refused(server, input=[user("hi"), {"type": "tool_result", "content": "x"}])
    assert (error["param"], error["code"], error["type"]) == ("input[1].type", "invalid_value", "invalid_request_error")
    error = refused(server, input={"role": "user"})
    assert (error["param"], error["code"]) == ("input", "invalid_type")


def test_function_tools_are_flat_and_get_called_with_their_required_properties(server: UpstreamServer) -> None:
    chat_shaped = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    error = refused(server, input="weather?", tools=[{"type": "web_search"}, chat_shaped])
    assert (error["param"], error["code"]) == ("tools[1].name", "missing_required_parameter")
    [call] = ok(server, input="weather?", tools=[{"type": "mcp", "server_label": "x"}, WEATHER])["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["status"] == "completed"
    assert call["id"].startswith("fc_") and call["call_id"].startswith("call_")
    assert json.loads(call["arguments"]) == {"city": "Paris"}


def test_function_call_output_needs_its_call(server: UpstreamServer) -> None:
    answer = {"type": "function_call_output", "call_id": "call_9", "output": "sunny"}
    error = refused(server, input=[user("weather?"), answer], tools=[WEATHER])
    assert error["message"] == "No tool call found for function call output with call_id call_9."
    call = {"type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": "{}"}
    [message] = ok(server, input=[user("weather?"), call, answer], tools=[WEATHER])["output"]
    assert message["content"][0]["text"] == "native answer: the tool said sunny"


def test_background_is_never_sent_up(server: UpstreamServer) -> None:
    assert refused(server, input="hi", background=True)["param"] == "background"
    assert ok(server, input="hi", background=False)["background"] is False


def test_previous_response_id_must_be_one_this_fake_stored(server: UpstreamServer) -> None:
    first = ok(server, input="weather?", tools=[WEATHER])
    call_id = first["output"][0]["call_id"]
    then = ok(server, previous_response_id=first["id"], tools=[WEATHER],
              input=[{"type": "function_call_output", "call_id": call_id, "output": "rain"}])
    assert then["previous_response_id"] == first["id"]
    assert then["output"][0]["content"][0]["text"] == "native answer: the tool said rain"
    error = refused(server, input="hi", previous_response_id="resp_from_the_gateway")
    assert error == {"message": "Previous response with id 'resp_from_the_gateway' not found.",
                     "type": "invalid_request_error", "param": "previous_response_id",
                     "code": "previous_response_not_found"}
    unstored = ok(server, input="hi", store=False)
    assert unstored["store"] is False
    assert refused(server, input="hi", previous_response_id=unstored["id"])["code"] == "previous_response_not_found"


def test_encrypted_reasoning_round_trips_only_byte_identical(server: UpstreamServer) -> None:
    first = ok(server, input="weather?", tools=[WEATHER], reasoning=THINKING, include=ENCRYPTED, store=False)
    rs, call = first["output"]
    answer = {"type": "function_call_output", "call_id": call["call_id"], "output": "fog"}
    replay = [user("weather?"), rs, call, answer]
    assert ok(server, input=replay, tools=[WEATHER], reasoning=THINKING, store=False)["status"] == "completed"
    codex_style = {k: v for k, v in rs.items() if k != "id"}  # Codex does not send reasoning ids back
    assert ok(server, input=[user("weather?"), codex_style, call, answer], store=False)["status"] == "completed"
    blob = rs["encrypted_content"]
    for altered in (blob[:-6] + ("A" if blob[-6] != "A" else "B") + blob[-5:], blob + "=", blob[4:]):
        error = refused(server, input=[user("weather?"), {**rs, "encrypted_content": altered}, call, answer])
        assert error["message"] == f"The encrypted content for item {rs['id']} could not be verified."
        assert (error["param"], error["code"]) == ("input[1].encrypted_content", "invalid_encrypted_content")


def test_reasoning_without_its_seal_must_be_a_stored_item(server: UpstreamServer) -> None:
    kept = ok(server, input="why", reasoning=THINKING)
    bare = {k: v for k, v in kept["output"][0].items() if k != "encrypted_content"}
    assert ok(server, input=[user("why"), bare, kept["output"][1], user("and?")])["status"] == "completed"
    gone = ok(server, input="why", reasoning=THINKING, store=False)
    error = refused(server, 404, input=[user("why"), gone["output"][0], gone["output"][1], user("and?")])
    assert error["message"].startswith(f"Item with id '{gone['output'][0]['id']}' not found. Items are not "
                                       "persisted when `store` is set to false.")
    assert error["param"] == "input"
    error = refused(server, input=[user("why"), bare])
    assert error["message"] == (f"Item '{bare['id']}' of type 'reasoning' was provided without its required "
                                "following item.")


def test_a_call_emitted_with_reasoning_needs_that_reasoning_before_it(server: UpstreamServer) -> None:
    rs, call = ok(server, input="weather?", tools=[WEATHER], reasoning=THINKING, include=ENCRYPTED)["output"]
    answer = {"type": "function_call_output", "call_id": call["call_id"], "output": "fog"}
    error = refused(server, input=[user("weather?"), call, answer])
    assert error["message"] == (f"Item '{call['id']}' of type 'function_call' was provided without its required "
                                f"'reasoning' item: '{rs['id']}'.")
    without_id = {k: v for k, v in call.items() if k != "id"}
    assert ok(server, input=[user("weather?"), without_id, answer])["status"] == "completed"
    assert ok(server, input=[user("weather?"), rs, call, answer])["status"] == "completed"


def test_item_references_resolve_to_stored_items_only(server: UpstreamServer) -> None:
    kept = ok(server, input="weather?", tools=[WEATHER])
    call = kept["output"][0]
    answer = {"type": "function_call_output", "call_id": call["call_id"], "output": "hail"}
    reference = {"type": "item_reference", "id": call["id"]}
    assert ok(server, input=[user("weather?"), reference, answer])["status"] == "completed"
    error = refused(server, 404, input=[{"type": "item_reference", "id": "fc_nowhere"}, user("hi")])
    assert error["message"].startswith("Item with id 'fc_nowhere' not found.")


# ---- streams ----


def test_stream_order_and_sequence_numbers(server: UpstreamServer) -> None:
    r = post(server, {"model": "fake-model", "input": "two words", "stream": True, "reasoning": THINKING})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert "[DONE]" not in r.text
    summary = ["response.reasoning_summary_text.delta"] * 4  # "Thinking about two words"
    text = ["response.output_text.delta"] * 4  # "native answer: two words"
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added", *summary,
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", *text, "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    final = SdkResponse.model_validate(events[-1][1]["response"])
    assert final.status == "completed" and final.output_text == "native answer: two words"
    for kind, done in (("output_text", final.output_text), ("reasoning_summary_text", "Thinking about two words")):
        assert "".join(d["delta"] for n, d in events if n == f"response.{kind}.delta") == done
    assert events[-1][1]["response"]["id"] == created["id"]


def test_sdk_stream_accumulates_calls_searches_and_citations(client: openai.OpenAI) -> None:
    with client.responses.stream(model="fake-model", input="weather?", tools=[WEATHER]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds.count("response.function_call_arguments.delta") >= 2
    assert final.output[0].type == "function_call" and json.loads(final.output[0].arguments) == {"city": "Paris"}
    with client.responses.stream(model="fake-model", input="tallest tower", tools=[{"type": "web_search"}],
                                 reasoning={"effort": "low"}, include=["reasoning.encrypted_content"]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert [o.type for o in final.output] == ["reasoning", "web_search_call", "message"]
    assert kinds.index("response.web_search_call.in_progress") < kinds.index("response.web_search_call.searching") \
        < kinds.index("response.web_search_call.completed")
    assert "response.output_text.annotation.added" in kinds
    assert final.output_text.endswith("(example.com)")


def test_cut_stream_ends_with_response_incomplete(server: UpstreamServer) -> None:
    body = {"model": "fake-model", "input": " ".join(["word"] * 20), "max_output_tokens": 16, "stream": True}
    events = sse(post(server, body).text)
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_midstream_error_is_two_deltas_then_an_error_event(server: UpstreamServer) -> None:
    events = sse(post(server, {"model": "midstream-error@x", "input": "a b c d", "stream": True}).text)
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "error"]
    assert events[-1][1] == {"type": "error", "code": "server_error", "param": None, "sequence_number": 6,
                             "message": "The server had an error while processing your request."}
    assert post(server, {"model": "midstream-error", "input": "a"}).status_code == 500


def test_fails_early_is_a_failed_response(server: UpstreamServer) -> None:
    events = sse(post(server, {"model": "fails-early", "input": "a", "stream": True}).text)
    assert [name for name, _ in events] == ["response.created", "response.in_progress", "response.failed"]
    failed = SdkResponse.model_validate(events[-1][1]["response"])
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    r = post(server, {"model": "fails-early", "input": "a"})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"


# ---- the edges it shares with the chat fake ----


def test_auth_injected_failures_azure_and_the_record(server: UpstreamServer) -> None:
    assert post(server, {"model": "fake-model", "input": "hi"}, headers={}).status_code == 401
    assert post(server, {"model": "fail-429@r", "input": "hi"}).status_code == 429
    assert post(server, {"model": "m", "input": "hi"}, "/openai/responses", headers={"api-key": KEY}).status_code == 404
    r = post(server, {"model": "deployment", "input": "hi"}, "/openai/responses?api-version=2025-03-01-preview",
             headers={"api-key": KEY})
    assert r.status_code == 200 and r.json()["output"][0]["content"][0]["text"] == "native answer: hi"
    assert post(server, {"model": "m", "input": "hi"}, "/openai/responses?api-version=1",
                headers={"api-key": "sk-wrong-key-0000"}).status_code == 401
    last = server.requests[-1]
    assert (last.method, last.path, last.body) == ("POST", "/openai/responses", {"model": "m", "input": "hi"})
