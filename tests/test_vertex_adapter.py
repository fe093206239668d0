"""Vertex AI's adapter over real HTTP to the fake (tests/fakes/vertex_upstream.py), and what it reads.

Credentials: a token is minted once for concurrent calls, kept until near its expiry, replaced after
it, forgotten when Google refuses it; a key Google does not trust is a 502 that names no secret.
Errors: Claude on Vertex answers in two shapes, Google's and Anthropic's. Config: nothing in it can
change the host or path a call goes to.

The fake signs nothing for us: it checks the JWT-bearer assertion google-auth signs with the test's
freshly generated service-account key, and takes only the tokens it minted, unexpired.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from broker.config import VertexProvider
from broker.errors import UpstreamError
from broker.wire import ChatRequest, EmbeddingRequest, chat_request_decoder, embedding_request_decoder
from tests.fakes.gemini_upstream import embedding
from tests.fakes.vertex_upstream import VertexServer
from workers.providers.vertex import VertexGemini, api_root, error_from_vertex, vertex

PROJECT, LOCATION = "tokens-test-0042", "europe-west4"
LIFETIME_S = 3  # the fake's tokens: we replace one after 2.25 s (a quarter of its life early)
HELLO: Any = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


def chat() -> ChatRequest:
    return chat_request_decoder.decode(json.dumps(HELLO).encode())


@pytest.fixture
async def server() -> AsyncIterator[VertexServer]:
    async with VertexServer(project=PROJECT, location=LOCATION, lifetime_s=LIFETIME_S) as fake:
        yield fake  # type: ignore[misc]


def config(server: VertexServer, key: Path | None, **extra: Any) -> VertexProvider:
    return VertexProvider(project=PROJECT, location=LOCATION, base_url=server.base_url,
                          credentials_file=str(key) if key else None, **extra)


@pytest.fixture
async def gemini(server: VertexServer) -> AsyncIterator[VertexGemini]:
    adapter = VertexGemini("vertex", config(server, server.key_file("broker")))
    yield adapter
    await adapter.aclose()


async def answer(adapter: VertexGemini) -> str:
    reply = await adapter.complete(chat(), model="gemini-2.0-flash", deadline=time.time() + 10)
    return reply.choices[0].message.content or ""


def model_calls(server: VertexServer) -> list[str]:
    return [r.headers.get("authorization", "") for r in server.requests if r.path.startswith("/v1/")]


async def test_concurrent_calls_share_one_token_request(gemini: VertexGemini, server: VertexServer) -> None:
    answers = await asyncio.gather(*(answer(gemini) for _ in range(8)))
    assert answers == ["You said: hello there"] * 8
    assert server.token_requests() == 1
    assert len(set(model_calls(server))) == 1  # all eight carried the one token


async def test_a_token_is_kept_while_fresh_and_replaced_after_it_expires(gemini: VertexGemini,
                                                                         server: VertexServer) -> None:
    await answer(gemini)
    await answer(gemini)
    assert server.token_requests() == 1
    await asyncio.sleep(LIFETIME_S + 0.2)  # the first token is dead: the fake would answer it 401
    assert await answer(gemini) == "You said: hello there"
    assert server.token_requests() == 2
    first, _, third = model_calls(server)
    assert first != third


async def test_a_token_google_refuses_is_forgotten_and_the_next_call_mints_another(
    gemini: VertexGemini, server: VertexServer
) -> None:
    await answer(gemini)
    server.tokens.issued.clear()  # revoked on Google's side
    with pytest.raises(UpstreamError) as info:
        await answer(gemini)
    assert info.value.upstream_status == 401 and "UNAUTHENTICATED" in info.value.message
    assert info.value.status == 502 and not info.value.retryable
    assert await answer(gemini) == "You said: hello there"
    assert server.token_requests() == 2


async def test_a_key_google_does_not_trust_is_refused_and_never_shown(server: VertexServer) -> None:
    server.key_file("current")  # the account's key Google knows; the deployment holds another
    key = server.key_file("stale", trusted=False)
    adapter = vertex("vertex", config(server, key))
    try:
        with pytest.raises(UpstreamError) as info:
            await adapter.complete(chat(), model="gemini-2.0-flash", deadline=time.time() + 10)
    finally:
        await adapter.aclose()
    err = info.value
    assert err.status == 502 and err.upstream_status == 401 and not err.retryable
    assert "Invalid JWT Signature" in err.message
    secret = json.loads(key.read_text())
    assert secret["private_key_id"] not in err.message and "PRIVATE KEY" not in err.message
    assert server.token_requests() == 1 and model_calls(server) == []  # refused before any model call


async def test_an_unreadable_key_file_is_a_502_that_fails_over(server: VertexServer, tmp_path: Path) -> None:
    adapter = vertex("vertex", config(server, tmp_path / "missing.json"))
    with pytest.raises(UpstreamError) as info:
        await adapter.complete(chat(), model="gemini-2.0-flash", deadline=time.time() + 10)
    assert info.value.status == 502 and info.value.upstream_status == 401
    assert server.token_requests() == 0


async def test_application_default_credentials_find_the_key_google_says_where(
    server: VertexServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(server.key_file("adc")))
    adapter = vertex("vertex", config(server, None))
    try:
        reply = await adapter.complete(chat(), model="gemini-2.0-flash", deadline=time.time() + 10)
    finally:
        await adapter.aclose()
    assert reply.choices[0].message.content == "You said: hello there"
    assert server.token_requests() == 1


async def test_a_project_the_token_cannot_reach_is_googles_403(server: VertexServer) -> None:
    adapter = vertex("vertex", msgspec.structs.replace(config(server, server.key_file("other")), project="not-ours"))
    try:
        with pytest.raises(UpstreamError) as info:
            await adapter.complete(chat(), model="gemini-2.0-flash", deadline=time.time() + 10)
    finally:
        await adapter.aclose()
    assert info.value.upstream_status == 403 and "PERMISSION_DENIED" in info.value.message


def embedding_request(texts: list[str], **body: Any) -> EmbeddingRequest:
    return embedding_request_decoder.decode(json.dumps({"model": "e", "input": texts, **body}).encode())


async def test_embeddings_go_up_in_batches_the_model_takes(gemini: VertexGemini, server: VertexServer) -> None:
    texts = [f"text number {i}" for i in range(260)]
    result = await gemini.embed(embedding_request(texts, dimensions=8), model="text-embedding-005",
                                deadline=time.time() + 10)
    assert result.vectors == [embedding(t, 8) for t in texts] and result.prompt_tokens == 3 * 260  # Google's count
    sent = [r.body for r in server.requests if r.path.endswith("/text-embedding-005:predict")]
    assert sorted(len(b["instances"]) for b in sent) == [10, 250]
    assert sent[0]["parameters"] == {"autoTruncate": False, "outputDimensionality": 8}
    # gemini-embedding models take one text a request.
    result = await gemini.embed(embedding_request(["a b", "c"]), model="gemini-embedding-001", deadline=time.time() + 10)
    assert result.vectors == [embedding("a b", 768), embedding("c", 768)] and result.prompt_tokens == 3
    assert [len(r.body["instances"]) for r in server.requests if "gemini-embedding-001" in r.path] == [1, 1]


@pytest.mark.parametrize("authorization, reason", [(None, "CREDENTIALS_MISSING"),
                                                   ("Bearer ya29.never-minted", "ACCESS_TOKEN_TYPE_UNSUPPORTED")])
async def test_the_fake_refuses_a_call_without_a_token_it_minted_as_google_does(
    server: VertexServer, authorization: str | None, reason: str
) -> None:
    headers = {"authorization": authorization} if authorization else {}
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{server.base_url}/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"
                               "gemini-2.0-flash:generateContent", json=HELLO, headers=headers)
    assert resp.status_code == 401
    error = resp.json()["error"]
    assert (error["code"], error["status"], error["details"][0]["reason"]) == (401, "UNAUTHENTICATED", reason)


def test_the_location_picks_the_host() -> None:
    assert api_root("global") == "https://aiplatform.googleapis.com/v1"
    assert api_root("us") == "https://aiplatform.us.rep.googleapis.com/v1"
    assert api_root("us-east5") == "https://us-east5-aiplatform.googleapis.com/v1"


@pytest.mark.parametrize("field, value", [("location", "us-east5.evil.com/x"), ("project", "a/b"),
                                          ("publisher", "meta")])
def test_a_location_or_project_that_would_change_the_url_is_refused(field: str, value: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"kind": "vertex", "project": "p-1", field: value}, VertexProvider)


def test_claude_on_vertex_reads_googles_errors_and_anthropics() -> None:
    quota = error_from_vertex(429, b'{"error": {"code": 429, "message": "Resource exhausted.", '
                                   b'"status": "RESOURCE_EXHAUSTED"}}', {})
    assert quota.status == 429 and quota.retryable and "Vertex AI error (429 RESOURCE_EXHAUSTED)" in quota.message
    busy = error_from_vertex(503, b'{"error": {"code": 503, "message": "Service unavailable.", '
                                  b'"status": "UNAVAILABLE"}}', {})
    assert busy.status == 503 and busy.retryable
    overloaded = error_from_vertex(529, b'{"type": "error", "error": {"type": "overloaded_error", '
                                        b'"message": "Overloaded"}}', {})
    assert overloaded.status == 503 and overloaded.retryable and "overloaded_error" in overloaded.message
    bad = error_from_vertex(400, b'{"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}', {})
    assert bad.status == 400 and not bad.retryable
    proxy = error_from_vertex(502, b"<html>Bad Gateway</html>", {"retry-after": "3"})
    assert proxy.status == 502 and proxy.retryable and proxy.retry_after_s == 3
