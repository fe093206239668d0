"""The Cohere adapter against its fake over real HTTP: embeddings, reranks, a 429, and a stream
cut before message-end. What the SDK sees of chat is the conformance suite's (test_conformance.py)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import openai
import pytest

from broker.config.providers import CohereProvider
from broker.config.types import Secret
from broker.errors import InvalidRequest, UpstreamError
from broker.wire import ChatRequest, EmbeddingRequest, embedding_request_decoder
from broker.wire.rerank import rerank_request_decoder
from tests.fakes.cohere_upstream import embedding
from tests.fakes.server import FakeServer
from tests.providers import COHERE
from tests.providers.case import last
from workers.providers import cohere_stream
from workers.providers.cohere import CohereV2

pytestmark = pytest.mark.parametrize("provider", [COHERE], ids=["cohere"], indirect=True, scope="package")


@pytest.fixture
async def adapter(upstream: FakeServer) -> AsyncIterator[CohereV2]:
    provider = CohereV2("cohere", CohereProvider(base_url=upstream.base_url, api_key=Secret(COHERE.key),
                                                 embed_input_type="search_query"))
    yield provider
    await provider.aclose()


def embedding_request(**body: Any) -> EmbeddingRequest:
    return embedding_request_decoder.decode(json.dumps({"model": "embed", **body}).encode())


async def test_embed_sends_v2_embed_with_its_input_type_and_float_vectors(adapter: CohereV2,
                                                                          upstream: FakeServer) -> None:
    result = await adapter.embed(embedding_request(input=["a b", "c"], dimensions=256), model="embed-v4.0",
                                 deadline=time.time() + 10)
    assert result.vectors == [embedding(t, 256) for t in ("a b", "c")] and result.prompt_tokens == 3
    sent = last(upstream)
    assert sent.path == "/v2/embed" and sent.body == {
        "model": "embed-v4.0", "texts": ["a b", "c"], "input_type": "search_query", "embedding_types": ["float"],
        "output_dimension": 256}


async def test_embed_splits_more_than_96_texts_into_batches(adapter: CohereV2, upstream: FakeServer) -> None:
    texts = [f"text {i}" for i in range(200)]
    result = await adapter.embed(embedding_request(input=texts), model="embed-v4.0", deadline=time.time() + 10)
    assert len(result.vectors) == 200 and result.vectors[199] == embedding("text 199", 1536)
    assert result.prompt_tokens == 400
    assert sorted(len(r.body["texts"]) for r in list(upstream.requests)[-3:]) == [8, 96, 96]


async def test_embed_refuses_token_ids(adapter: CohereV2) -> None:
    with pytest.raises(InvalidRequest):
        await adapter.embed(embedding_request(input=[1, 2, 3]), model="embed-v4.0", deadline=time.time() + 5)


async def test_rerank_goes_to_v2_rerank_with_documents_as_strings(adapter: CohereV2, upstream: FakeServer) -> None:
    req = rerank_request_decoder.decode(json.dumps({
        "model": "rr", "query": "capital of France", "top_n": 2, "max_tokens_per_doc": 512,
        "documents": ["Berlin is in Germany", {"text": "Paris is the capital of France"}, "France exports wine"],
    }).encode())
    ranked = await adapter.rerank(req, model="rerank-v3.5", deadline=time.time() + 10)
    assert last(upstream).body == {"model": "rerank-v3.5", "query": "capital of France", "top_n": 2,
                                   "max_tokens_per_doc": 512, "documents": [
                                       "Berlin is in Germany", "Paris is the capital of France", "France exports wine"]}
    assert [i for i, _ in ranked.scores] == [1, 2] and ranked.search_units == 1


async def test_a_stream_that_ends_before_message_end_is_an_error(adapter: CohereV2, upstream: FakeServer) -> None:
    # The fake's midstream model stops after a message-end with ERROR: its words, then a retryable error.
    req = msgspec.json.decode(json.dumps({"model": "x", "messages": [{"role": "user", "content": "hello there"}], "stream": True}).encode(),
                              type=ChatRequest)
    got: list[str] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in adapter.stream(req, model="midstream-error", deadline=time.time() + 10):
            got += [c.delta.content for c in chunk.choices if isinstance(c.delta.content, str)]
    assert "".join(got) == "You said: " and info.value.retryable


def test_a_body_without_message_end_is_not_finished(provider: Any) -> None:
    state = cohere_stream.StreamState("m")
    events = [{"type": "message-start", "id": "x", "delta": {"message": {"role": "assistant"}}},
              {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hi"}}}}]
    chunks = [c for e in events for c in cohere_stream.on_event(json.dumps(e).encode(), state)]
    assert [c.choices[0].delta.content for c in chunks] == ["", "Hi"] and not cohere_stream.finished(state)


def test_a_429_is_a_rate_limit_with_coheres_words(provider: Any, client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="limited", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "rate_limit_exceeded" and "Trial key" in info.value.message


def test_embeddings_through_the_broker(provider: Any, client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model="embed", input=["a", "b c"], dimensions=256, encoding_format="float")
    assert [d.embedding for d in reply.data] == [pytest.approx(embedding(t, 256), abs=1e-6) for t in ("a", "b c")]
    assert reply.usage.prompt_tokens == 3
