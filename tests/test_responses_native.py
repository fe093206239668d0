"""Native pass-through: /v1/responses relayed to a deployment whose upstream speaks the Responses API itself.

The OpenAI fake (tests/fakes/openai_responses.py) serves POST /v1/responses as OpenAI does, and checks
what OpenAI checks: a `previous_response_id` it never stored, `background`, encrypted reasoning that is not
byte-identical, a reasoning id it does not hold, a function call's id without its reasoning item. So a
broker that forwarded its own ids, ran background upstream, or replayed its history carelessly would fail
here. The same fake also serves Chat, for the translated deployments beside the native ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from broker.config import hash_key
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import TEST_KEY
from tests.stacks import Stack, StackFactory

UPSTREAM_KEY = "sk-upstream-native-0123456789"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}
REASONING: Any = {"reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"]}
PRICE = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=UPSTREAM_KEY, chunks=4) as server:
        yield server


@pytest.fixture(scope="module")
def stack(module_stack_factory: StackFactory, upstream: UpstreamServer) -> Stack:
    common = {"kind": "openai", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY, "profile": "openai"}
    providers: dict[str, Any] = {"native": {**common, "responses_api": True}, "chat": common, "mock": {"kind": "mock"}}
    models: dict[str, Any] = {
        "gpt-native": [{"provider": "native", "model": "fake-model", **PRICE}],
        "gpt-chat": [{"provider": "chat", "model": "fake-model"}],
        # One of each: what only the native one runs goes there; the rest is served by the first.
        "chat-or-native": [{"provider": "chat", "model": "fake-model"},
                           {"provider": "native", "model": "fake-model", **PRICE}],  # one price per deployment
        "native-then-chat": [{"provider": "native", "model": "fail-503"}, {"provider": "chat", "model": "fake-model"}],
        "native-fails-early": [{"provider": "native", "model": "fails-early"}, {"provider": "mock", "model": "m"}],
        "native-dies": [{"provider": "native", "model": "midstream-error"}],
    }
    running = module_stack_factory(providers, models, tenants={"test": {"keys": [hash_key(TEST_KEY)]}})
    running.up("native", "chat", "mock", apis=(1, 1))
    return running


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_urls[0], api_key=TEST_KEY, max_retries=0)


def _sent(upstream: UpstreamServer) -> list[dict[str, Any]]:
    """The bodies the fake's Responses API received, oldest first."""
    return [r.body for r in upstream.app.state.requests if r.path.endswith("/responses")]


def _items(response: Any) -> list[dict[str, Any]]:
    """A Response's output as a client replays it as the next `input`."""
    return [item.model_dump(exclude_none=True) for item in response.output]


def test_the_request_goes_up_as_sent_and_the_answer_comes_back_as_ours(client: openai.OpenAI, stack: Stack,
                                                                      upstream: UpstreamServer) -> None:
    before = len(_sent(upstream))
    response = client.responses.create(model="gpt-native", input="hello there", instructions="Be brief.",
                                       metadata={"k": "v"}, max_output_tokens=64,
                                       extra_body={"service_tier": "flex", "unknown_field": [1, 2]})
    sent = _sent(upstream)[before:]
    assert len(sent) == 1
    assert sent[0] == {"model": "fake-model", "input": "hello there", "instructions": "Be brief.",
                       "metadata": {"k": "v"}, "max_output_tokens": 64, "service_tier": "flex",
                       "unknown_field": [1, 2]}
    assert response.id.startswith("resp_") and response.model == "gpt-native" and response.status == "completed"
    assert response.output_text.startswith("native answer") and response.metadata == {"k": "v"}
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0
    assert getattr(usage, "cost") == pytest.approx((usage.input_tokens * 2 + usage.output_tokens * 8) / 1e6)
    other = openai.OpenAI(base_url=stack.base_urls[1], api_key=TEST_KEY, max_retries=0)
    assert other.responses.retrieve(response.id).output_text == response.output_text  # stored under our id


def test_a_native_stream_is_relayed_event_by_event_under_our_id(client: openai.OpenAI) -> None:
    with client.responses.stream(model="gpt-native", input="stream it please") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert {events[0].response.id, final.id} == {final.id} and final.id.startswith("resp_")
    assert events[0].response.model == final.model == "gpt-native"
    assert final.output_text.startswith("native answer") and getattr(final.usage, "cost") > 0
    assert client.responses.retrieve(final.id).output_text == final.output_text


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_built_in_tool_passes_through_and_its_items_come_back(client: openai.OpenAI, stream: bool) -> None:
    request: Any = {"model": "chat-or-native", "input": "latest news on llamas", "tools": [{"type": "web_search"}]}
    if stream:
        with client.responses.stream(**request) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(**request)
    kinds = [item.type for item in response.output]
    assert kinds == ["web_search_call", "message"]
    annotations = response.output[1].content[0].annotations  # type: ignore[union-attr]
    assert annotations and annotations[0].type == "url_citation"
    # The next turn replays the web search call: only the native deployment can read it.
    follow_up = client.responses.create(model="chat-or-native", previous_response_id=response.id, input="more?")
    assert follow_up.status == "completed"


def test_a_built_in_tool_is_refused_by_name_where_no_deployment_speaks_the_responses_api(
        client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="web_search") as refused:
        client.responses.create(model="gpt-chat", input="news", tools=[{"type": "web_search"}])
    assert refused.value.body["param"] == "tools[0].type"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="web_search_call"):
        client.responses.create(model="gpt-chat", input=[
            {"role": "user", "content": "news"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}},
            {"role": "user", "content": "and?"}])


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_encrypted_reasoning_survives_a_replayed_history(client: openai.OpenAI, upstream: UpstreamServer,
                                                         stream: bool) -> None:
    """As Codex and the Agents SDK run stateless (`store: false`): every turn replays the whole history,
    reasoning items with their encrypted_content, which the fake checks byte for byte."""
    first: Any = {"model": "gpt-native", "input": [{"role": "user", "content": "weather in Paris?"}],
                  "tools": [WEATHER], "store": False, **REASONING}
    if stream:
        with client.responses.stream(**first) as events:
            one = events.get_final_response()
    else:
        one = client.responses.create(**first)
    reasoning, call = one.output[0], one.output[1]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content  # type: ignore[union-attr]
    assert call.type == "function_call" and call.id and call.call_id  # type: ignore[union-attr]
    replayed = [*first["input"], *_items(one), {"type": "function_call_output", "call_id": call.call_id,  # type: ignore[union-attr]
                                                  "output": "18C, sunny"}]
    two = client.responses.create(**{**first, "input": replayed})
    assert two.status == "completed" and "18C, sunny" in two.output_text
    assert _sent(upstream)[-1]["input"][1]["encrypted_content"] == reasoning.encrypted_content  # type: ignore[union-attr]


@pytest.mark.parametrize("include", [True, False], ids=["encrypted", "plain"])
def test_previous_response_id_inlines_our_stored_turns_for_the_upstream(client: openai.OpenAI,
                                                                        upstream: UpstreamServer,
                                                                        include: bool) -> None:
    """Our response ids mean nothing upstream: the turns go up as items, reasoning only with its
    encrypted_content, the upstream's item ids left out (OpenAI refuses a call's id without its reasoning)."""
    one = client.responses.create(model="gpt-native", input="weather in Tokyo?", tools=[WEATHER],
                                  reasoning={"effort": "low"}, include=["reasoning.encrypted_content"] if include else [])
    call = one.output[-1]
    assert call.type == "function_call"
    two = client.responses.create(model="gpt-native", previous_response_id=one.id, tools=[WEATHER],
                                  input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}])
    assert two.status == "completed" and "rain" in two.output_text and two.previous_response_id == one.id
    sent = _sent(upstream)[-1]
    assert "previous_response_id" not in sent
    kinds = [item.get("type", "message") for item in sent["input"]]
    assert kinds == (["message", "reasoning", "function_call", "function_call_output"] if include
                     else ["message", "function_call", "function_call_output"])
    assert all("id" not in item for item in sent["input"] if item.get("type") in ("function_call", "message"))
    three = client.responses.create(model="gpt-chat", previous_response_id=two.id, input="and tomorrow?")
    assert three.status == "completed"  # the same chain, continued on a translated deployment


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("model", ["native-then-chat", "native-fails-early"])
def test_failover_from_native_to_translated_is_unseen(client: openai.OpenAI, model: str, stream: bool) -> None:
    if stream:
        with client.responses.stream(model=model, input="hello there") as events:
            kinds = [event.type for event in events]
            response = events.get_final_response()
        assert kinds[0] == "response.created" and kinds.count("response.created") == 1
        assert kinds.count("response.in_progress") == 1
    else:
        raw = client.responses.with_raw_response.create(model=model, input="hello there")
        assert raw.headers["x-llm-broker-attempts"] == "2"
        response = raw.parse()
    assert response.status == "completed" and response.model == model and response.output_text
    assert response.id.startswith("resp_") and client.responses.retrieve(response.id).id == response.id


def test_a_native_failure_after_the_first_event_ends_with_error_and_response_failed(stack: Stack) -> None:
    with httpx.stream("POST", f"{stack.base_urls[0]}/responses", timeout=10,
                      json={"model": "native-dies", "input": "hello there", "stream": True},
                      headers={"authorization": f"Bearer {TEST_KEY}"}) as answer:
        body = answer.read().decode()
    kinds = [line.removeprefix("event: ") for line in body.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "response.created" and "response.output_text.delta" in kinds
    assert kinds[kinds.index("error"):kinds.index("error") + 2] == ["error", "response.failed"]
    assert "response.completed" not in kinds and body.rstrip().endswith("data: [DONE]")
    assert UPSTREAM_KEY not in body


def test_background_runs_here_not_upstream(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    created = client.responses.create(model="gpt-native", input="in the background", background=True)
    assert created.status in ("queued", "in_progress") and created.background is True
    deadline = time.monotonic() + 15
    while (found := client.responses.retrieve(created.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert found.status == "completed" and found.id == created.id and found.background is True
    assert found.output_text.startswith("native answer") and "background" not in _sent(upstream)[-1]
