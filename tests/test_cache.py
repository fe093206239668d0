"""The exact-match response cache and its single flight, through the official SDK against a real
API + worker stack, with the fake upstream counting the calls that reach it."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml

from broker.config import ConfigError, hash_key, validate
from broker.keys import Keys
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import REDIS_URL, TEST_KEY, sse_data
from tests.stacks import Stack, StackFactory

OTHER_KEY = "sk-other-tenant-0001"
LIMITED_KEY = "sk-limited-tenant-01"
CACHE = {"ttl_s": 60, "max_entries": 1000}
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                             "parameters": {"type": "object", "required": ["city"],
                                                            "properties": {"city": {"type": "string"}}}}}]


def with_cache(stack: Stack, cache: dict[str, Any]) -> Stack:
    """The stack's config with a top-level `cache:` section (written before its processes start)."""
    doc = yaml.safe_load(stack.config_path.read_text())
    doc["cache"] = cache
    stack.config_path.write_text(yaml.safe_dump(doc))
    return stack


pytestmark = pytest.mark.upstream(chunks=4)


@pytest.fixture(scope="module")
def stack(module_stack_factory: StackFactory, upstream: UpstreamServer) -> Stack:
    def group(model: str, **cache: Any) -> dict[str, Any]:
        return {"deployments": [{"provider": "up", "model": model}], **({"cache": cache} if cache else {})}

    stack = module_stack_factory(
        {"up": {"kind": "openai", "base_url": upstream.base_url, "concurrency": 32},
         "mock": {"kind": "mock", "tokens": 6}},
        {"cached": [{"provider": "up", "model": "fake-model"}],
         "shared": group("fake-model", shared=True),
         "short": group("fake-model", ttl_s=1),
         "sampled": group("fake-model", deterministic_only=False),
         "off": group("fake-model", enabled=False),
         "hold": [{"provider": "up", "model": "hold"}],
         "broken": [{"provider": "up", "model": "fail-400"}],
         "mock": [{"provider": "mock", "model": "mock-model"}]},
        tenants={"test": {"keys": [hash_key(TEST_KEY)]}, "other": {"keys": [hash_key(OTHER_KEY)]},
                 "limited": {"keys": [hash_key(LIMITED_KEY)], "rpm": 1}},
    )
    with_cache(stack, CACHE)
    stack.up("up", "mock")
    return stack


@pytest.fixture(scope="module")
def base_url(stack: Stack) -> str:
    return stack.base_url


def calls(upstream: UpstreamServer) -> int:
    return int(httpx.get(f"{upstream.base_url}/fake/stats").json()["chat_calls"])


def ask(client: openai.OpenAI, content: str, model: str = "cached", **kw: Any) -> Any:
    """A deterministic request, raw: (headers, parsed completion)."""
    kw.setdefault("temperature", 0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **kw)
    return raw.headers, raw.parse()


def test_a_repeated_request_is_a_hit_that_makes_no_upstream_call(client: openai.OpenAI,
                                                                 upstream: UpstreamServer) -> None:
    before = calls(upstream)
    headers, first = ask(client, "what is a fox")
    assert headers["x-llm-broker-cache"] == "miss" and calls(upstream) == before + 1
    headers, again = ask(client, "what is a fox")
    assert headers["x-llm-broker-cache"] == "hit" and calls(upstream) == before + 1
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.choices[0].finish_reason == first.choices[0].finish_reason
    assert again.usage.prompt_tokens == first.usage.prompt_tokens  # the answer's own counts...
    assert again.usage.model_extra["cost"] == 0  # ...at no cost
    assert headers["x-llm-broker-cost-usd"] == "0"
    # A new answer: its own id, the one its x-request-id names.
    assert again.id != first.id and again.id == "chatcmpl-" + headers["x-request-id"].removeprefix("req_")


def test_what_shapes_the_answer_is_part_of_the_key_and_what_does_not_is_not(client: openai.OpenAI,
                                                                           upstream: UpstreamServer) -> None:
    ask(client, "key parts", max_tokens=50)
    before = calls(upstream)
    for kw in ({"max_tokens": 49}, {"max_tokens": 50, "seed": 7}, {"max_tokens": 50, "temperature": 0.0, "top_p": 0.5},
               {"max_tokens": 50, "tools": WEATHER}, {"max_tokens": 50, "stop": ["x"]}):
        headers, _ = ask(client, "key parts", **kw)
        assert headers["x-llm-broker-cache"] == "miss", kw
    assert calls(upstream) == before + 5
    headers, _ = ask(client, "key parts", max_tokens=50, user="someone-else", metadata={"run": "2"})
    assert headers["x-llm-broker-cache"] == "hit"  # who asked and how it is labelled change no answer
    headers, _ = ask(client, "key parts", model="shared", max_tokens=50)
    assert headers["x-llm-broker-cache"] == "miss"  # another model
    # Dict key order does not matter: the same tool schema written in another order.
    reordered = [{"function": {"parameters": {"properties": {"city": {"type": "string"}}, "required": ["city"],
                                              "type": "object"},
                               "description": "Weather of a city", "name": "get_weather"}, "type": "function"}]
    headers, _ = ask(client, "key parts", max_tokens=50, tools=reordered)
    assert headers["x-llm-broker-cache"] == "hit"


def test_only_deterministic_requests_are_cached_unless_the_model_says_otherwise(client: openai.OpenAI,
                                                                                upstream: UpstreamServer) -> None:
    before = calls(upstream)
    for _ in range(2):
        headers, _ = ask(client, "sampled", temperature=0.7)
        assert headers["x-llm-broker-cache"] == "miss"
    assert calls(upstream) == before + 2
    ask(client, "seeded", temperature=0.7, seed=42)
    assert ask(client, "seeded", temperature=0.7, seed=42)[0]["x-llm-broker-cache"] == "hit"
    ask(client, "widened", model="sampled", temperature=0.7)
    assert ask(client, "widened", model="sampled", temperature=0.7)[0]["x-llm-broker-cache"] == "hit"
    headers, _ = ask(client, "off", model="off")
    assert "x-llm-broker-cache" not in headers and ask(client, "off", model="off")[0].get("x-llm-broker-cache") is None


def test_answers_stay_with_their_tenant_unless_the_model_is_shared(client: openai.OpenAI, base_url: str,
                                                                  upstream: UpstreamServer) -> None:
    other = openai.OpenAI(base_url=base_url, api_key=OTHER_KEY, max_retries=0)
    ask(client, "tenant scope")
    ask(client, "tenant scope", model="shared")
    before = calls(upstream)
    assert ask(other, "tenant scope")[0]["x-llm-broker-cache"] == "miss"
    assert ask(other, "tenant scope", model="shared")[0]["x-llm-broker-cache"] == "hit"
    assert calls(upstream) == before + 1


def test_a_streamed_request_gets_a_cached_answer_replayed_as_sse(client: openai.OpenAI,
                                                                upstream: UpstreamServer) -> None:
    _, first = ask(client, "replay me")
    before = calls(upstream)
    raw = client.chat.completions.with_raw_response.create(
        model="cached", temperature=0, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "replay me"}])
    assert raw.headers["x-llm-broker-cache"] == "hit" and raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert calls(upstream) == before
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == first.choices[0].message.content
    assert [c.choices[0].delta.role for c in chunks if c.choices][0] == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert not chunks[-1].choices and chunks[-1].usage.total_tokens == first.usage.total_tokens
    assert chunks[-1].usage.model_extra["cost"] == 0
    assert len({c.id for c in chunks}) == 1


def test_a_streamed_answer_is_cached_for_plain_requests_and_tool_calls_survive(client: openai.OpenAI,
                                                                              upstream: UpstreamServer) -> None:
    kw: dict[str, Any] = {"model": "cached", "temperature": 0, "tools": WEATHER, "tool_choice": "required",
                          "messages": [{"role": "user", "content": "weather in Paris?"}]}
    streamed = list(client.chat.completions.create(stream=True, **kw))
    assert streamed
    before = calls(upstream)
    raw = client.chat.completions.with_raw_response.create(**kw)
    assert raw.headers["x-llm-broker-cache"] == "hit" and calls(upstream) == before
    plain = raw.parse()
    call = plain.choices[0].message.tool_calls[0]
    streamed_args = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                            for c in streamed if c.choices and c.choices[0].delta.tool_calls)
    assert call.function.name == "get_weather" and call.function.arguments == streamed_args
    assert plain.choices[0].finish_reason == "tool_calls"
    # The SDK's stream helper concatenates every string field: a replay must not repeat ids or names.
    with client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    replayed = final.choices[0].message.tool_calls[0]
    assert (replayed.id, replayed.function.name, replayed.function.arguments) == (
        call.id, call.function.name, call.function.arguments)
    assert calls(upstream) == before


def test_identical_concurrent_requests_share_one_upstream_call(stack: Stack, base_url: str,
                                                               upstream: UpstreamServer) -> None:
    # The upstream holds each call for 1 s: all 50 arrive while the first is in flight. A 1 s read
    # timeout halves the streams' first-byte hold, so streamed followers wait through keep-alives.
    async def burst(urls: list[str], tag: str, stream: bool) -> list[tuple[str, str]]:
        clients = [openai.AsyncOpenAI(base_url=url, api_key=TEST_KEY, max_retries=0, timeout=1.0 if stream else 30)
                   for url in urls]

        async def one(client: openai.AsyncOpenAI) -> tuple[str, str]:
            kw: dict[str, Any] = {"model": "hold", "temperature": 0,
                                  "messages": [{"role": "user", "content": f"flight {tag}"}]}
            if not stream:
                raw = await client.chat.completions.with_raw_response.create(**kw)
                return raw.headers["x-llm-broker-cache"], raw.parse().choices[0].message.content or ""
            raw = await client.chat.completions.with_raw_response.create(stream=True, **kw)
            text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
            return raw.headers["x-llm-broker-cache"], text

        answers = list(await asyncio.gather(*(one(clients[i % len(clients)]) for i in range(50))))
        for client in clients:
            await client.close()
        return answers

    other_process = stack.api()  # a second API process: its requests follow through Redis
    for urls, tag, stream in (([base_url], "a", False), ([base_url], "b", True),
                              ([base_url, other_process], "c", False), ([base_url, other_process], "d", True)):
        before = calls(upstream)
        answers = asyncio.run(burst(urls, tag, stream))
        assert calls(upstream) == before + 1, (tag, calls(upstream) - before)
        assert len({text for _, text in answers}) == 1 and answers[0][1]
        assert sorted(state for state, _ in answers) == ["hit"] * 49 + ["miss"], tag


def test_a_streamed_follower_of_a_slow_leader_gets_keep_alives_then_the_replay(base_url: str,
                                                                             upstream: UpstreamServer) -> None:
    body = {"model": "hold", "temperature": 0, "messages": [{"role": "user", "content": "slow leader"}]}
    headers = {"authorization": f"Bearer {TEST_KEY}"}

    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
            leader = asyncio.ensure_future(http.post("/chat/completions", json=body))
            await asyncio.sleep(0.2)
            # A 1 s read timeout: the follower's first-byte hold is 0.5 s, shorter than the leader's 1 s call.
            follower = await http.post("/chat/completions", json={**body, "stream": True},
                                       headers={"x-stainless-read-timeout": "1"})
            return await leader, follower

    before = calls(upstream)
    leader, follower = asyncio.run(main())
    assert calls(upstream) == before + 1
    assert follower.headers["x-llm-broker-cache"] == "hit" and follower.text.startswith(": keep-alive")
    events = sse_data(follower.text)
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == leader.json()["choices"][0]["message"]["content"]


def test_when_the_leaders_client_leaves_a_follower_leads_instead(base_url: str) -> None:
    body = {"model": "hold", "temperature": 0, "messages": [{"role": "user", "content": "leader leaves"}]}
    headers = {"authorization": f"Bearer {TEST_KEY}"}

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
            leader = asyncio.ensure_future(http.post("/chat/completions", json=body, timeout=0.4))
            await asyncio.sleep(0.1)
            follower = await http.post("/chat/completions", json=body)
            with pytest.raises(httpx.TimeoutException):
                await leader
            return follower

    follower = asyncio.run(main())
    assert follower.status_code == 200 and follower.headers["x-llm-broker-cache"] == "miss"  # it led the next flight
    assert follower.json()["choices"][0]["message"]["content"]


def test_followers_of_a_failed_request_get_their_own_answer(base_url: str) -> None:
    async def burst() -> list[BaseException | Any]:
        async with openai.AsyncOpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0) as client:
            return list(await asyncio.gather(*(client.chat.completions.create(
                model="broken", temperature=0, messages=[{"role": "user", "content": "fails for all"}])
                for _ in range(5)), return_exceptions=True))

    assert all(isinstance(result, openai.BadRequestError) for result in asyncio.run(burst()))


def test_an_entry_expires_after_its_ttl(client: openai.OpenAI, upstream: UpstreamServer, stack: Stack) -> None:
    ask(client, "fleeting", model="short")
    assert ask(client, "fleeting", model="short")[0]["x-llm-broker-cache"] == "hit"
    time.sleep(1.2)
    before = calls(upstream)
    assert ask(client, "fleeting", model="short")[0]["x-llm-broker-cache"] == "miss"
    assert calls(upstream) == before + 1


def test_failures_are_not_cached(client: openai.OpenAI, upstream: UpstreamServer, stack: Stack) -> None:
    for _ in range(2):
        before = calls(upstream)
        with pytest.raises(openai.BadRequestError):
            ask(client, "this fails", model="broken")
        assert calls(upstream) > before
    keys = Keys(yaml.safe_load(stack.config_path.read_text())["namespace"])
    r = redis.Redis.from_url(REDIS_URL)
    assert not list(r.scan_iter(match=keys.cache_flight("*", "*")))  # every flight landed


def test_cache_control_skips_the_lookup_or_the_storing(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    ask(client, "fresh please")
    before = calls(upstream)
    headers, _ = ask(client, "fresh please", extra_headers={"Cache-Control": "no-cache"})
    assert headers["x-llm-broker-cache"] == "miss" and calls(upstream) == before + 1
    headers, _ = ask(client, "do not keep", extra_headers={"Cache-Control": "no-store"})
    assert headers["x-llm-broker-cache"] == "miss"
    assert ask(client, "do not keep")[0]["x-llm-broker-cache"] == "miss"
    assert calls(upstream) == before + 3
    assert ask(client, "do not keep", extra_headers={"Cache-Control": "no-store"})[0]["x-llm-broker-cache"] == "hit"


def test_hits_bypass_rate_limits_and_are_counted_in_the_ledger(base_url: str) -> None:
    limited = openai.OpenAI(base_url=base_url, api_key=LIMITED_KEY, max_retries=0)
    assert ask(limited, "limited")[0]["x-llm-broker-cache"] == "miss"  # the one request a minute
    for _ in range(3):
        assert ask(limited, "limited")[0]["x-llm-broker-cache"] == "hit"
    with pytest.raises(openai.RateLimitError):
        ask(limited, "something new")
    usage = httpx.get(f"{base_url}/usage", params={"group_by": "deployment"},
                      headers={"authorization": f"Bearer {LIMITED_KEY}"}).json()
    rows = {row["deployment"]: row for row in usage["data"]}
    deadline = time.monotonic() + 5
    while rows.get("cache", {}).get("cache_hits") != 3 and time.monotonic() < deadline:  # recorded in the background
        time.sleep(0.05)
        usage = httpx.get(f"{base_url}/usage", params={"group_by": "deployment"},
                          headers={"authorization": f"Bearer {LIMITED_KEY}"}).json()
        rows = {row["deployment"]: row for row in usage["data"]}
    assert rows["cache"]["cache_hits"] == 3 and rows["cache"]["requests"] == 3
    assert rows["cache"]["cost_nanos"] == 0 and rows["cache"]["input_tokens"] == 0
    assert usage["total"]["requests"] == 4


def test_embeddings_and_legacy_completions_are_cached_too(base_url: str) -> None:
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    body = {"model": "mock", "input": ["a cached vector"]}
    first = httpx.post(f"{base_url}/embeddings", json=body, headers=headers)
    again = httpx.post(f"{base_url}/embeddings", json=body, headers=headers)
    assert (first.headers["x-llm-broker-cache"], again.headers["x-llm-broker-cache"]) == ("miss", "hit")
    assert again.json()["data"] == first.json()["data"]
    text = {"model": "mock", "prompt": "once upon", "temperature": 0}
    plain = httpx.post(f"{base_url}/completions", json=text, headers=headers).json()
    streamed = httpx.post(f"{base_url}/completions", json={**text, "stream": True}, headers=headers)
    assert streamed.headers["x-llm-broker-cache"] == "hit"
    events = sse_data(streamed.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]


def test_the_cache_holds_at_most_max_entries_each_with_a_ttl(stack_factory: StackFactory) -> None:
    stack = with_cache(stack_factory({"mock": {"kind": "mock", "tokens": 3}},
                                     {"m": [{"provider": "mock", "model": "m"}]}), {"ttl_s": 30, "max_entries": 5})
    base_url = stack.up("mock")
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    for i in range(12):
        ask(client, f"entry {i}", model="m")
    keys = Keys(yaml.safe_load(stack.config_path.read_text())["namespace"])
    r = redis.Redis.from_url(REDIS_URL)
    entries = list(r.scan_iter(match=keys.cache_entry("*", "*")))
    assert len(entries) <= 5 and r.zcard(keys.cache_index()) <= 5
    assert all(0 < r.pttl(key) <= 30_000 for key in [*entries, keys.cache_index()])
    assert ask(client, "entry 11", model="m")[0]["x-llm-broker-cache"] == "hit"  # the newest stays
    assert ask(client, "entry 0", model="m")[0]["x-llm-broker-cache"] == "miss"  # the oldest went


def test_cache_config_is_off_unless_present_and_a_model_cannot_have_one_alone() -> None:
    base: dict[str, Any] = {"providers": {"mock": {"kind": "mock"}}, "tenants": {},
                            "models": {"m": {"deployments": [{"provider": "mock", "model": "m"}]}}}
    assert validate(base, source="t").cache is None
    with pytest.raises(ConfigError, match=r"top-level `cache:`.*\$\.models\.m\.cache"):
        validate({**base, "models": {"m": {"deployments": [{"provider": "mock", "model": "m"}],
                                           "cache": {"shared": True}}}}, source="t")
    with pytest.raises(ConfigError, match="max_entries"):
        validate({**base, "cache": {"max_entries": 0}}, source="t")


# ---- /v1/messages: kept and replayed in Anthropic's shapes


def _messages(base_url: str) -> Any:
    import anthropic

    return anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key=TEST_KEY, max_retries=0)


def _message_text(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_a_messages_answer_is_kept_and_given_back_as_a_message(base_url: str, upstream: UpstreamServer) -> None:
    client = _messages(base_url)
    request: Any = {"model": "cached", "max_tokens": 16, "extra_body": {"temperature": 0},
                    "messages": [{"role": "user", "content": "cache this message"}]}
    before = calls(upstream)
    first = client.messages.with_raw_response.create(**request)
    second = client.messages.with_raw_response.create(**request)
    assert first.headers["x-llm-broker-cache"] == "miss" and second.headers["x-llm-broker-cache"] == "hit"
    assert calls(upstream) == before + 1
    a, b = first.parse(), second.parse()
    assert b.id.startswith("msg_") and b.id != a.id and b.content == a.content and b.stop_reason == a.stop_reason


@pytest.mark.parametrize("first_streams", [True, False], ids=["stream-then-create", "create-then-stream"])
def test_a_messages_stream_is_kept_whole_and_replayed_as_events(base_url: str, upstream: UpstreamServer,
                                                              first_streams: bool) -> None:
    client = _messages(base_url)
    request: Any = {"model": "cached", "max_tokens": 16, "extra_body": {"temperature": 0},
                    "messages": [{"role": "user", "content": f"cache me {first_streams}"}]}

    def streamed() -> Any:
        with client.messages.stream(**request) as stream:
            return stream.get_final_message()

    before = calls(upstream)
    first = streamed() if first_streams else client.messages.create(**request)
    second = client.messages.create(**request) if first_streams else streamed()
    assert calls(upstream) == before + 1  # the second came from the cache, in the other form
    assert _message_text(second) == _message_text(first) and second.stop_reason == first.stop_reason
    assert second.usage.output_tokens == first.usage.output_tokens


# ---- /v1/responses: a Response kept whole; a hit is a new response, stored like any other

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather of a city",
                "parameters": WEATHER[0]["function"]["parameters"]}


def respond(client: openai.OpenAI, text: str, **kw: Any) -> Any:
    """A deterministic Responses request, raw: (headers, parsed response)."""
    raw = client.responses.with_raw_response.create(model="cached", input=text, temperature=0, **kw)
    return raw.headers, raw.parse()


def test_a_responses_hit_is_a_new_response_that_echoes_its_own_request(client: openai.OpenAI,
                                                                      upstream: UpstreamServer) -> None:
    before = calls(upstream)
    headers, first = respond(client, "cache this response", metadata={"run": "1"})
    assert headers["x-llm-broker-cache"] == "miss" and calls(upstream) == before + 1
    # Labels and who asked are not part of the key: it hits, and says what this request said.
    headers, again = respond(client, "cache this response", metadata={"run": "2"}, user="someone-else")
    assert headers["x-llm-broker-cache"] == "hit" and calls(upstream) == before + 1
    assert headers["x-llm-broker-cost-usd"] == "0"
    assert again.id.startswith("resp_") and again.id != first.id
    assert again.output_text == first.output_text and again.status == first.status == "completed"
    assert again.metadata == {"run": "2"} and again.user == "someone-else" and first.metadata == {"run": "1"}
    assert again.output[0].id != first.output[0].id  # its items are its own too
    assert again.usage.output_tokens == first.usage.output_tokens  # the answer's own counts...
    assert again.usage.model_extra["cost"] == 0  # ...at no cost


@pytest.mark.parametrize("first_streams", [True, False], ids=["stream-then-create", "create-then-stream"])
def test_a_responses_stream_is_kept_whole_and_replayed_as_its_events(client: openai.OpenAI,
                                                                    upstream: UpstreamServer,
                                                                    first_streams: bool) -> None:
    request: dict[str, Any] = {"model": "cached", "temperature": 0, "input": f"stream this response {first_streams}"}

    def streamed() -> tuple[list[Any], Any]:
        with client.responses.stream(**request) as stream:
            events = list(stream)
            return events, stream.get_final_response()

    before = calls(upstream)
    if first_streams:
        _, first = streamed()
        raw = client.responses.with_raw_response.create(**request)
        assert raw.headers["x-llm-broker-cache"] == "hit"
        second = raw.parse()
    else:
        first = client.responses.create(**request)
        events, second = streamed()
        kinds = [event.type for event in events]
        assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.output_text.delta", "response.output_text.done",
                         "response.content_part.done", "response.output_item.done", "response.completed"]
        assert [event.sequence_number for event in events] == list(range(len(events)))
        assert events[0].response.id == second.id and events[4].delta == first.output_text
        raw = client.responses.with_raw_response.create(stream=True, **request)  # the events as sent
        assert raw.headers["x-llm-broker-cache"] == "hit"
        completed = list(raw.parse())[-1]
        assert completed.type == "response.completed" and completed.response.usage.model_extra["cost"] == 0
    assert calls(upstream) == before + 1  # the second came from the cache, in the other form
    assert second.id != first.id and second.status == "completed"
    assert second.output_text == first.output_text and second.usage.total_tokens == first.usage.total_tokens
    if first_streams:
        assert second.usage.model_extra["cost"] == 0


def test_a_responses_function_call_is_replayed_with_its_call_id_and_arguments(client: openai.OpenAI,
                                                                             upstream: UpstreamServer) -> None:
    request: dict[str, Any] = {"model": "cached", "temperature": 0, "input": "weather in Paris, as a response?",
                               "tools": [WEATHER_TOOL], "tool_choice": "required"}
    first = client.responses.create(**request)
    made = [(item.call_id, item.name, item.arguments) for item in first.output if item.type == "function_call"]
    assert made and made[0][1] == "get_weather"
    before = calls(upstream)
    with client.responses.stream(**request) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert calls(upstream) == before
    assert [(item.call_id, item.name, item.arguments) for item in final.output if item.type == "function_call"] == made
    done = [event for event in events if event.type == "response.function_call_arguments.done"]
    assert [event.arguments for event in done] == [arguments for _, _, arguments in made]
    assert [event.sequence_number for event in events] == list(range(len(events)))


def test_a_responses_hit_is_stored_and_can_be_continued(client: openai.OpenAI, upstream: UpstreamServer) -> None:
    request: dict[str, Any] = {"model": "cached", "temperature": 0, "input": "remember this response"}
    first = client.responses.create(**request)
    before = calls(upstream)
    hit = client.responses.create(**request)
    with client.responses.stream(**request) as stream:
        streamed = stream.get_final_response()
    assert calls(upstream) == before and len({first.id, hit.id, streamed.id}) == 3
    for answer in (hit, streamed):  # stored before its client saw it, as a response that ran is
        found = client.responses.retrieve(answer.id)
        assert found.id == answer.id and found.output_text == answer.output_text == first.output_text
    follow = client.responses.create(model="cached", temperature=0, previous_response_id=hit.id, input="and then?")
    assert follow.status == "completed" and follow.output_text and follow.previous_response_id == hit.id
    assert calls(upstream) == before + 1
