"""The hot routes' own way in (api/hot_path.py) answers exactly as FastAPI does: two API processes on one
namespace, one with `server.hot_path` on (the default) and one with it off, are sent the same requests
over real HTTP, through the official SDKs and byte for byte, and must agree on statuses, bodies,
headers and metrics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.hot_path import HotPath
from broker import config as config_module
from tests.harness import TEST_KEY, RedisServer, write_config
from tests.stacks import StackFactory

PROVIDERS = {"mock": {"kind": "mock", "tokens": 4}, "idle": {"kind": "mock"}}
MODELS = {"m": [{"provider": "mock", "model": "m"}], "unserved": [{"provider": "idle", "model": "m"}]}
SERVER = {"max_body_bytes": 64 * 1024}
HOT = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages", "/v1/responses")
# What differs between two answers to the same request: ids and clocks.
VARYING = re.compile(rb'(?<=_)[0-9A-Za-z]{16,}|(?<="created":)\d+|(?<="created": )\d+|(?<="created_at":)\d+'
                     rb'|(?<="created_at": )\d+|\b[0-9a-f]{32}\b|(?<=127\.0\.0\.1:)\d+')
VARYING_HEADERS = {"date"}


@pytest.fixture(scope="module")
def roots(module_stack_factory: StackFactory) -> tuple[str, str]:
    """(hot path on, hot path off): two APIs sharing one worker."""
    hot = module_stack_factory(PROVIDERS, MODELS, server=SERVER)
    hot.up("mock")
    plain = module_stack_factory(PROVIDERS, MODELS, server={**SERVER, "hot_path": False})
    return hot.base_url.removesuffix("/v1"), plain.api().removesuffix("/v1")


def chat(model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def message(model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], **extra}


AUTH = {"authorization": f"Bearer {TEST_KEY}"}
# (path, headers, JSON body or raw bytes): answers, refusals and every error raised before or after a job exists.
CASES: dict[str, tuple[str, dict[str, str], Any]] = {
    "chat": ("/v1/chat/completions", AUTH, chat()),
    "chat stream": ("/v1/chat/completions", AUTH, chat(stream=True)),
    "completions": ("/v1/completions", AUTH, {"model": "m", "prompt": "one two", "max_tokens": 3}),
    "embeddings": ("/v1/embeddings", AUTH, {"model": "m", "input": ["alpha"], "encoding_format": "float"}),
    "messages": ("/v1/messages", {"x-api-key": TEST_KEY}, message()),
    "messages stream": ("/v1/messages", {"x-api-key": TEST_KEY}, message(stream=True)),
    "responses": ("/v1/responses", AUTH, {"model": "m", "input": "hi", "store": False}),
    "client id echoed": ("/v1/chat/completions", {**AUTH, "x-client-request-id": "mine-1"}, chat()),
    "client id on an error": ("/v1/chat/completions", {"x-client-request-id": "mine-2"}, chat()),
    "401 chat": ("/v1/chat/completions", {"authorization": "Bearer sk-wrong"}, chat()),
    "401 messages": ("/v1/messages", {"x-api-key": "sk-wrong"}, message()),
    "400 invalid body": ("/v1/chat/completions", AUTH, {"model": "m"}),
    "400 invalid messages body": ("/v1/messages", {"x-api-key": TEST_KEY}, {"model": "m"}),
    "400 malformed JSON": ("/v1/chat/completions", AUTH, b"{"),
    "400 bad X-Priority": ("/v1/chat/completions", {**AUTH, "x-priority": "urgent"}, chat()),
    "404 unknown model": ("/v1/chat/completions", AUTH, chat("nope")),
    "404 unknown model on messages": ("/v1/messages", {"x-api-key": TEST_KEY}, message("nope")),
    "413 oversized": ("/v1/embeddings", AUTH, {"model": "m", "input": "x" * 70_000}),
    "413 oversized messages": ("/v1/messages", {"x-api-key": TEST_KEY}, message(metadata={"x": "x" * 70_000})),
    "503 no live worker": ("/v1/chat/completions", AUTH, chat("unserved")),
    "529 no live worker on messages": ("/v1/messages", {"x-api-key": TEST_KEY}, message("unserved")),
    # Not hot: FastAPI answers both the same way.
    "405 wrong method": ("/v1/chat/completions", AUTH, None),
    "trailing slash": ("/v1/embeddings/", AUTH, {"model": "m", "input": "a"}),
}


def send(root: str, path: str, headers: dict[str, str], body: Any) -> httpx.Response:
    if body is None:
        return httpx.put(root + path, headers=headers, timeout=10)
    if isinstance(body, bytes):
        return httpx.post(root + path, headers={**headers, "content-type": "application/json"}, content=body,
                          timeout=10)
    return httpx.post(root + path, headers=headers, json=body, timeout=10)


def masked(resp: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {name: VARYING.sub(b"*", value.encode()).decode() for name, value in resp.headers.items()
               if name not in VARYING_HEADERS}
    return resp.status_code, headers, VARYING.sub(b"*", resp.content)


@pytest.mark.parametrize("case", CASES)
def test_the_hot_path_answers_as_fastapi_does(roots: tuple[str, str], case: str) -> None:
    hot, plain = (masked(send(root, *CASES[case])) for root in roots)
    assert hot == plain
    status, headers, body = hot
    if status != 307:  # FastAPI's redirect to the path without its slash carries none, on either
        assert headers["x-request-id"] == "req_*"  # every answer, every error
    if "client id" in case:
        assert headers["x-client-request-id"].startswith("mine-")
    if status >= 400 and case != "trailing slash":
        assert b"Traceback" not in body and b'"error"' in body


def test_the_sdks_see_the_same_answers(roots: tuple[str, str]) -> None:
    answers = []
    for root in roots:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key=TEST_KEY, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "yo"}])
        completion = raw.parse()
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{root}/v1", api_key="sk-wrong", max_retries=0).embeddings.create(
                model="m", input="x")
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "yo"}]) if chunk.choices)
        claude = anthropic.Anthropic(base_url=root, api_key=TEST_KEY, max_retries=0)
        said = claude.messages.create(model="m", max_tokens=16, messages=[{"role": "user", "content": "yo"}])
        with pytest.raises(anthropic.InternalServerError) as overloaded:  # 529 overloaded_error
            claude.messages.create(model="unserved", max_tokens=16, messages=[{"role": "user", "content": "yo"}])
        with pytest.raises(anthropic.NotFoundError) as unknown:
            claude.messages.create(model="nope", max_tokens=16, messages=[{"role": "user", "content": "yo"}])
        answers.append((completion.choices[0].message.content, sorted(raw.headers.keys()), missing.value.code,
                        streamed, said.content[0].text if said.content[0].type == "text" else "",
                        overloaded.value.status_code, overloaded.value.body, unknown.value.body))
    hot, plain = answers
    assert hot[0] and hot[3] and hot[4]  # real answers, not two equal failures
    assert hot[5] == 529
    assert masked_body(hot) == masked_body(plain)


def masked_body(answer: tuple[Any, ...]) -> str:
    return VARYING.sub(b"*", repr(answer).encode()).decode()


def requests_counted(root: str) -> dict[tuple[str, ...], float]:
    """llm_broker_requests_total and the duration histogram's counts on the hot routes, by labels."""
    text = httpx.get(f"{root}/metrics", timeout=10).text
    return {(s.name, *sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name in ("llm_broker_requests_total", "llm_broker_request_duration_seconds_count")
            and s.labels.get("route") in HOT}


def test_metrics_count_the_hot_path_as_fastapi_does(roots: tuple[str, str]) -> None:
    before = [requests_counted(root) for root in roots]
    for case in ("chat", "embeddings", "messages", "401 chat", "404 unknown model on messages", "413 oversized",
                 "503 no live worker"):
        for root in roots:
            send(root, *CASES[case])
    deltas = [{labels: n - was.get(labels, 0) for labels, n in now.items() if n != was.get(labels, 0)}
              for was, now in zip(before, (requests_counted(root) for root in roots), strict=True)]
    assert deltas[0] == deltas[1]
    assert deltas[0][("llm_broker_requests_total", ("model", "m"), ("route", "/v1/chat/completions"),
                      ("status", "200"), ("tenant", "test"))] == 1
    assert deltas[0][("llm_broker_requests_total", ("model", ""), ("route", "/v1/messages"), ("status", "404"),
                      ("tenant", ""))] == 1


def test_the_hot_routes_stay_documented(roots: tuple[str, str]) -> None:
    documented = httpx.get(f"{roots[0]}/openapi.json", timeout=10).json()["paths"]
    assert all("post" in documented[path] for path in HOT)


def test_every_job_backed_post_is_hot(tmp_path: Path) -> None:
    app = create_app(config_module.resolve(str(write_config(tmp_path / "c.yaml", "unused", providers=PROVIDERS,
                                                             models=MODELS))))
    edge = app.edge
    while not isinstance(edge, HotPath):  # behind the door
        edge = edge.app  # type: ignore[union-attr]
    assert set(HOT) | {"/v1/messages/count_tokens", "/v1/images/generations", "/v1/moderations",
                       "/v1/audio/speech", "/v1/rerank"} <= set(edge.routes)


def test_redis_down_is_the_same_503_on_both(stack_factory: StackFactory, own_redis: RedisServer) -> None:
    servers = [stack_factory(PROVIDERS, MODELS, redis_url=own_redis.url, server={"hot_path": on})
               for on in (True, False)]
    roots = [stack.api().removesuffix("/v1") for stack in servers]
    own_redis.kill()
    answers = [masked(send(root, *CASES["chat"])) for root in roots]
    assert answers[0] == answers[1]
    assert answers[0][0] == 503 and answers[0][1]["retry-after"] == "1"
    for stack in servers:  # logged once, with its cause (api/app.py `_redis_down`)
        assert stack.procs[-1].output().count("answering 503: ConnectionError") == 1


async def test_an_unexpected_error_is_the_same_500_without_a_traceback(tmp_path: Path) -> None:
    """An app whose lifespan never ran has no BrokerState: its handlers fail as a bug would."""
    answers = []
    for on in (True, False):
        config = config_module.resolve(str(write_config(tmp_path / f"{on}.yaml", "unused", providers=PROVIDERS,
                                                        models=MODELS, server={"hot_path": on})))
        transport = httpx.ASGITransport(app=create_app(config), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            answers.append(masked(await client.post("/v1/chat/completions", json=chat(),
                                                    headers={**AUTH, "x-client-request-id": "mine-3"})))
    assert answers[0] == answers[1]
    status, headers, body = answers[0]
    assert status == 500 and headers["x-client-request-id"] == "mine-3" and headers["x-request-id"] == "req_*"
    assert b"Traceback" not in body and b'"error"' in body
