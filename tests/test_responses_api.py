"""POST /v1/responses and the stored responses, through the official `openai` SDK and the Agents SDK.

The same stack as /v1/messages' (tests/backends.py): a model on each of the Anthropic, OpenAI-compatible
and Gemini fakes and the mock, every one served through its Chat Completions form and answered as a
Response, and two API processes, so a stored response is read from the one that did not answer it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any, Literal

import openai
import pydantic
import pytest

from tests import backends
from tests.backends import ALL, TIGHT_KEY, chat_text
from tests.fakes.server import FakeServer
from tests.harness import TEST_KEY
from tests.stacks import Stack, StackFactory

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, FakeServer]]:
    with backends.upstreams() as servers:
        yield servers


@pytest.fixture(scope="module")
def stack(module_stack_factory: StackFactory, upstreams: dict[str, FakeServer]) -> Stack:
    return backends.stack(module_stack_factory, upstreams)


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> str:
    return stack.base_urls[0]


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)


@pytest.mark.parametrize("model", ALL)
def test_create_answers_a_response(client: openai.OpenAI, base_url: str, model: str) -> None:
    response = client.responses.create(model=model, input="hello there", max_output_tokens=64)
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.model == model and response.error is None and response.incomplete_details is None
    assert response.output_text and response.output_text == chat_text(base_url, model, "hello there", max_tokens=64)
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0


@pytest.mark.parametrize("model", ALL)
def test_stream_sends_every_event_in_order_and_the_helper_gives_the_final_response(
        client: openai.OpenAI, base_url: str, model: str) -> None:
    with client.responses.stream(model=model, input="stream it", max_output_tokens=64) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert {kind for kind in kinds[4:-4]} == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == final.output_text == chat_text(base_url, model, "stream it", max_tokens=64)
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens > 0


def test_instructions_become_the_system_message(client: openai.OpenAI, upstreams: dict[str, FakeServer]) -> None:
    client.responses.create(model="gpt-translated", instructions="Be brief.", input="hi")
    sent = upstreams["gpt-translated"].requests[-1].body
    assert sent["messages"][:2] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize("model", ["claude-direct", "gpt-translated", "gemini-translated"])
@pytest.mark.parametrize("how", ["previous_response_id", "replayed input"])
def test_a_function_tool_round_trip(client: openai.OpenAI, model: str, how: str) -> None:
    first = client.responses.create(model=model, input="What is the weather in Paris?", tools=[WEATHER],
                                    tool_choice="required")
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and all(c.name == "get_weather" and c.call_id and c.id.startswith("fc_") for c in calls)
    results: list[Any] = [{"type": "function_call_output", "call_id": c.call_id, "output": f"{18 + i}C, sunny"}
                          for i, c in enumerate(calls)]
    if how == "previous_response_id":
        second = client.responses.create(model=model, previous_response_id=first.id, input=results, tools=[WEATHER])
    else:
        replayed = [{"role": "user", "content": "What is the weather in Paris?"},
                    *(item.model_dump(exclude_none=True) for item in first.output), *results]
        second = client.responses.create(model=model, input=replayed, tools=[WEATHER])
    assert second.status == "completed" and second.output_text
    assert model == "gpt-translated" or "18C, sunny" in second.output_text  # the other fakes quote results


class Weather(pydantic.BaseModel):
    city: str
    kind: Literal["sunny", "rainy", "snowy"]
    temperatures: list[int]


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_usage_carries_its_cost_as_on_chat(client: openai.OpenAI, stream: bool) -> None:
    """`priced` charges a dollar a token: usage.cost is what the tokens cost, as a chat answer's is."""
    request: Any = {"model": "priced", "input": "what does this cost", "max_output_tokens": 16}
    if stream:
        with client.responses.stream(**request) as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(**request)
    assert response.usage is not None
    assert getattr(response.usage, "cost") == response.usage.input_tokens + response.usage.output_tokens


def test_parse_gives_an_instance_of_the_model(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(model="mock-translated", input="The weather, please", text_format=Weather)
    assert isinstance(parsed.output_parsed, Weather)


def test_a_stored_response_is_retrieved_listed_and_deleted_from_the_other_api_process(stack: Stack) -> None:
    first, second = (openai.OpenAI(base_url=url, api_key=TEST_KEY, max_retries=0) for url in stack.base_urls)
    created = first.responses.create(model="mock-translated", input=[
        {"role": "user", "content": "one"}, {"role": "user", "content": [{"type": "input_text", "text": "two"}]}])
    found = second.responses.retrieve(created.id)  # at once, from the process that did not answer it
    assert found.id == created.id and found.output_text == created.output_text
    items = list(second.responses.input_items.list(created.id, limit=1, order="asc"))
    assert len(items) == 2 and all(item.id for item in items)
    assert second.responses.delete(created.id) is None
    with pytest.raises(openai.NotFoundError):
        first.responses.retrieve(created.id)


def test_a_conversation_continues_across_api_processes_and_providers(stack: Stack,
                                                                     upstreams: dict[str, FakeServer]) -> None:
    first, second = (openai.OpenAI(base_url=url, api_key=TEST_KEY, max_retries=0) for url in stack.base_urls)
    one = first.responses.create(model="mock-translated", input="Remember the word zebra.")
    two = second.responses.create(model="gpt-translated", previous_response_id=one.id, input="Which word?")
    sent = upstreams["gpt-translated"].requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "Remember the word zebra." and sent[1]["content"] == one.output_text
    three = first.responses.create(model="claude-direct", previous_response_id=two.id, input="And again?")
    assert three.output_text == "You said: And again?"
    assert len(upstreams["claude-direct"].requests[-1].body["messages"]) == 5


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    created = client.responses.create(model="mock-translated", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_another_tenant_cannot_read_or_continue_a_response(base_url: str, client: openai.OpenAI) -> None:
    created = client.responses.create(model="mock-translated", input="mine")
    other = openai.OpenAI(base_url=base_url, api_key=TIGHT_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        other.responses.create(model="mock-translated", previous_response_id=created.id, input="theirs")
    assert caught.value.body["param"] == "previous_response_id"


@pytest.mark.parametrize("tool", ["web_search", "file_search", "computer_use_preview", "code_interpreter"])
def test_a_built_in_tool_no_deployment_runs_is_a_400_naming_it(client: openai.OpenAI, tool: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-translated", input="search", tools=[{"type": tool}])  # type: ignore[list-item]
    assert tool in caught.value.message and caught.value.body["param"] == "tools[0].type"


def test_the_agents_sdk_runs_an_agent_with_a_function_tool(base_url: str) -> None:
    import agents

    asked: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        asked.append(city)
        return f"{city}: 18C, sunny"

    agents.set_default_openai_client(openai.AsyncOpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0),
                                     use_for_tracing=False)
    agents.set_tracing_disabled(True)
    agent = agents.Agent(name="forecaster", instructions="Answer with the weather.", model="claude-direct",
                         tools=[get_weather])
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?"))
    assert asked == ["Paris"] and "18C, sunny" in result.final_output


@pytest.mark.parametrize("model", ["claude-then-gpt", "gpt-then-claude"])
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_failover_before_the_first_event_is_unseen(client: openai.OpenAI, model: str, stream: bool) -> None:
    if stream:
        with client.responses.stream(model=model, input="hello there") as s:
            kinds = [event.type for event in s]
            response = s.get_final_response()
        assert kinds[0] == "response.created" and kinds.count("response.created") == 1
    else:
        raw = client.responses.with_raw_response.create(model=model, input="hello there")
        assert raw.headers["x-llm-broker-attempts"] == "2"
        response = raw.parse()
    assert response.status == "completed" and response.model == model and response.output_text
    assert (response.output_text == "You said: hello there") == (model == "gpt-then-claude")


@pytest.mark.parametrize("model", ["claude-dies", "gpt-dies"])
def test_a_failure_after_the_first_event_ends_the_stream_with_error_and_response_failed(
        base_url: str, model: str) -> None:
    import httpx

    with httpx.stream("POST", f"{base_url}/responses", json={"model": model, "input": "hello there", "stream": True},
                      headers={"authorization": f"Bearer {TEST_KEY}"}, timeout=10) as answer:
        body = answer.read().decode()
    kinds = [line.removeprefix("event: ") for line in body.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "response.created" and "response.output_text.delta" in kinds
    assert kinds[kinds.index("error"):kinds.index("error") + 2] == ["error", "response.failed"]
    assert "response.completed" not in kinds and body.rstrip().endswith("data: [DONE]")
    with pytest.raises(openai.APIError):
        with openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0).responses.stream(
                model=model, input="hello there") as s:
            for _ in s:
                pass


def test_background_answers_queued_at_once_and_retrieve_follows_it_to_the_end(client: openai.OpenAI,
                                                                              stack: Stack) -> None:
    created = client.responses.create(model="mock-translated", input="in the background", background=True)
    assert created.status in ("queued", "in_progress") and created.background is True and not created.output
    other_process = openai.OpenAI(base_url=stack.base_urls[1], api_key=TEST_KEY, max_retries=0)
    deadline = time.monotonic() + 15
    while (found := other_process.responses.retrieve(created.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert found.status == "completed" and found.id == created.id
    assert found.output_text == client.responses.create(model="mock-translated", input="in the background").output_text
    assert client.responses.retrieve(created.id).output_text == found.output_text  # kept once done


def test_a_background_response_is_cancelled(client: openai.OpenAI) -> None:
    created = client.responses.create(model="gpt-slow", input="take your time", background=True)
    cancelled = client.responses.cancel(created.id)
    assert cancelled.id == created.id and cancelled.status == "cancelled"
    assert client.responses.retrieve(created.id).status == "cancelled"
    done = client.responses.create(model="mock-translated", input="quick")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(done.id)


@pytest.mark.parametrize("effort, budget", [("low", 2048), ("high", 24576)])
def test_reasoning_effort_becomes_each_upstreams_own_control(client: openai.OpenAI, upstreams: dict[str, FakeServer],
                                                             effort: Literal["low", "high"], budget: int) -> None:
    reasoning: Any = {"effort": effort}
    client.responses.create(model="gpt-translated", input="think", reasoning=reasoning, max_output_tokens=64)
    assert upstreams["gpt-translated"].requests[-1].body["reasoning_effort"] == effort
    answer = client.responses.create(model="claude-direct", input="think", reasoning=reasoning, max_output_tokens=64)
    sent = upstreams["claude-direct"].requests[-1].body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": budget} and sent["max_tokens"] == 64 + budget
    assert answer.output_text == "You said: think"  # the thinking block does not leak into the text
    with client.responses.stream(model="claude-direct", input="think", reasoning=reasoning) as stream:
        assert stream.get_final_response().output_text == "You said: think"  # nor into a stream
    client.responses.create(model="gemini-translated", input="think", reasoning=reasoning)
    sent = upstreams["gemini-translated"].requests[-1].body
    assert sent["generationConfig"]["thinkingConfig"] == {"thinkingBudget": budget}


class Forecast(pydantic.BaseModel):
    city: str
    kind: Literal["sunny", "rainy", "snowy"]


@pytest.mark.parametrize("model", ["claude-direct", "gpt-translated", "gemini-translated"])
def test_json_schema_output_parses_on_every_upstream(client: openai.OpenAI, model: str) -> None:
    parsed = client.responses.parse(model=model, input="The forecast, please", text_format=Forecast)
    assert isinstance(parsed.output_parsed, Forecast) and parsed.status == "completed"


PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.mark.parametrize("model", ["claude-direct", "gpt-translated", "gemini-translated"])
def test_an_image_part_reaches_every_upstream(client: openai.OpenAI, model: str,
                                              upstreams: dict[str, FakeServer]) -> None:
    content: Any = [{"type": "input_text", "text": "What is in this image?"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{PIXEL}", "detail": "auto"}]
    response = client.responses.create(model=model, input=[{"role": "user", "content": content}])
    assert response.status == "completed" and response.output_text
    assert PIXEL in json.dumps(upstreams[model].requests[-1].body)
    if model == "claude-direct":
        assert response.output_text.startswith("I see 1 image(s).")


def test_truncation_auto_drops_the_oldest_turns_and_disabled_refuses(client: openai.OpenAI,
                                                                     upstreams: dict[str, FakeServer]) -> None:
    first = client.responses.create(model="gpt-small", input="A" * 100)  # ~25 tokens of a 40-token window
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-small", previous_response_id=first.id, input="B" * 100)
    assert caught.value.code == "context_length_exceeded" and caught.value.body["param"] == "input"
    second = client.responses.create(model="gpt-small", previous_response_id=first.id, input="B" * 100,
                                     truncation="auto")
    assert second.status == "completed"
    assert upstreams["gpt-translated"].requests[-1].body["messages"] == [{"role": "user", "content": "B" * 100}]
    with pytest.raises(openai.BadRequestError):  # its own input alone does not fit: nothing left to drop
        client.responses.create(model="gpt-small", input="C" * 400, truncation="auto")


def test_a_background_stream_is_followed_and_picked_up_again_after_any_event(client: openai.OpenAI,
                                                                             stack: Stack) -> None:
    events = list(client.responses.create(model="gpt-translated", input="long story", background=True, stream=True))
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    response_id = events[0].response.id
    other_process = openai.OpenAI(base_url=stack.base_urls[1], api_key=TEST_KEY, max_retries=0)
    resumed = list(other_process.responses.retrieve(response_id, stream=True, starting_after=3))
    assert [event.sequence_number for event in resumed] == list(range(4, len(events)))
    assert [event.type for event in resumed] == kinds[4:]
    final = other_process.responses.retrieve(response_id)
    assert final.status == "completed" and final.output_text == events[-1].response.output_text
    with pytest.raises(openai.BadRequestError):  # a response that did not run in the background
        client.responses.retrieve(client.responses.create(model="mock-translated", input="x").id, stream=True)
