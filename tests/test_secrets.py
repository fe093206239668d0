"""Our upstream credentials never reach a client or a log line, even from an upstream that echoes them."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.ops.redaction import redact, remember
from tests.fakes.server import EventStream, FakeServer
from tests.harness import TEST_KEY
from tests.stacks import Stack, StackFactory

UPSTREAM_KEY = "sk-proj-Ab+cd/EF=gh1234567890xyz"  # + / = : a pattern alone masks only part of it
HEADER_SECRET = "tok_live_9f8e7d6c5b4a3210"
FRAGMENTS = [UPSTREAM_KEY, "Ab+cd", "EF=gh1234567890", quote(UPSTREAM_KEY, safe=""), HEADER_SECRET, "9f8e7d6c5b4a"]


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                          "code": None}}), status, media_type="application/json")


def hostile_upstream() -> FakeServer:
    """An OpenAI-compatible upstream that repeats whatever credentials it was sent in its errors."""

    async def chat(request: Request) -> Response:
        body = await request.json()
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        custom = request.headers.get("x-custom-auth", "")
        match body["model"]:
            case "echo-401":
                return _error(401, f"Incorrect API key provided: {key}. You can find your API key at ...")
            case "echo-400":
                return _error(400, f"Bad request from key {quote(key, safe='')} with x-custom-auth={custom}")
            case "echo-midstream":
                async def events() -> AsyncIterator[bytes]:
                    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                                          "finish_reason": None}]}
                    yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                    error = {"error": {"message": f"session for {key} ({custom}) expired", "type": "server_error"}}
                    yield b"data: " + json.dumps(error).encode() + b"\n\n"
                return EventStream(events())
        return _error(404, "no such model")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.state.requests = []
    return FakeServer(app)


pytestmark = pytest.mark.upstream(serve=hostile_upstream)


@pytest.fixture(scope="module")
def stack(module_stack_factory: StackFactory, upstream: FakeServer) -> Stack:
    stack = module_stack_factory(
        {"hostile": {"kind": "openai", "base_url": upstream.base_url, "api_key": UPSTREAM_KEY, "max_retries": 0,
                     "headers": {"X-Custom-Auth": HEADER_SECRET}},
         "mock": {"kind": "mock"}},
        {"echo-401": [{"provider": "hostile", "model": "echo-401"}],
         "echo-400": [{"provider": "hostile", "model": "echo-400"}],
         "echo-midstream": [{"provider": "hostile", "model": "echo-midstream"}],
         "echo-then-mock": [{"provider": "hostile", "model": "echo-401"}, {"provider": "mock", "model": "m"}]},
    )
    stack.up("hostile", "mock")
    return stack


def assert_clean(text: str) -> None:
    for fragment in FRAGMENTS:
        assert fragment not in text, f"{fragment!r} leaked in: {text[:400]}"


@pytest.mark.parametrize("model", ["echo-401", "echo-400"])
def test_an_upstream_error_echoing_our_key_reaches_the_client_without_it(stack: Stack, model: str) -> None:
    resp = httpx.post(f"{stack.base_url}/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code in (400, 502), resp.text
    assert "***" in resp.json()["error"]["message"]
    assert_clean(resp.text)


def test_a_mid_stream_error_echoing_our_key_reaches_the_client_without_it(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.base_url, api_key=TEST_KEY, max_retries=0)
    with pytest.raises(openai.APIError) as info:
        for _ in client.chat.completions.create(model="echo-midstream", stream=True,
                                                messages=[{"role": "user", "content": "hi"}]):
            pass
    assert "expired" in info.value.message
    assert_clean(info.value.message)


def test_logs_never_hold_our_key(stack: Stack) -> None:
    resp = httpx.post(f"{stack.base_url}/chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                      json={"model": "echo-then-mock", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200  # failed over, and the worker logged why
    time.sleep(0.3)
    logs = "".join(proc.output() for proc in stack.procs)
    assert "failed over" in logs
    assert_clean(logs)


def test_literal_secrets_are_removed_whole_and_patterns_catch_the_unknown() -> None:
    remember(["abc+def/ghi=jkl-12345"])
    assert redact("key abc+def/ghi=jkl-12345 and abc%2Bdef%2Fghi%3Djkl-12345") == "key *** and ***"
    assert redact("Authorization: Bearer sk-unknown+key/with=signs") == "Authorization: Bearer ***"


def test_a_redis_urls_password_never_reaches_a_banner() -> None:
    from broker.store.connection import without_password

    assert without_password("redis://:hunter2@cache:6379/0") == "redis://:***@cache:6379/0"
    assert without_password("redis+sentinel://ops:p%40ss@s1:26379,s2:26379/main/0") == \
        "redis+sentinel://ops:***@s1:26379,s2:26379/main/0"
    assert without_password("redis+cluster://a:7000,b:7001") == "redis+cluster://a:7000,b:7001"
