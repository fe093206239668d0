"""The Gemini adapter's embeddings over real HTTP to the fake: batching and what it refuses.

What the SDK sees of them is the conformance suite's (test_conformance.py, EMBEDDINGS).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from broker.config import GeminiProvider
from broker.config.types import Secret
from broker.errors import InvalidRequest
from broker.wire import EmbeddingRequest, embedding_request_decoder
from tests.fakes.gemini_upstream import embedding
from tests.fakes.server import FakeServer
from tests.providers import GEMINI
from tests.providers.case import last
from workers.providers.gemini import GeminiGenerateContent

pytestmark = pytest.mark.parametrize("provider", [GEMINI], ids=["gemini"], indirect=True, scope="package")


@pytest.fixture
async def adapter(upstream: FakeServer) -> AsyncIterator[GeminiGenerateContent]:
    provider = GeminiGenerateContent("gemini", GeminiProvider(base_url=upstream.base_url, api_key=Secret(GEMINI.key)))
    yield provider
    await provider.aclose()


def embedding_request(**body: Any) -> EmbeddingRequest:
    return embedding_request_decoder.decode(json.dumps({"model": "gem-embed", **body}).encode())


async def test_embed_returns_vectors_in_input_order(adapter: GeminiGenerateContent, upstream: FakeServer) -> None:
    result = await adapter.embed(embedding_request(input=["a", "bb", "ccc"], dimensions=8),
                                 model="gemini-embedding-001", deadline=time.time() + 10)
    assert result.vectors == [embedding(t, 8) for t in ("a", "bb", "ccc")]
    assert result.prompt_tokens == 3
    request = last(upstream)
    assert request.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert request.body["requests"][0] == {"model": "models/gemini-embedding-001",
                                           "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 8}


async def test_embed_splits_more_than_100_inputs_into_batches(adapter: GeminiGenerateContent,
                                                              upstream: FakeServer) -> None:
    texts = [f"text {i}" for i in range(250)]
    result = await adapter.embed(embedding_request(input=texts), model="gemini-embedding-001",
                                 deadline=time.time() + 10)
    assert len(result.vectors) == 250 and result.vectors[249] == embedding("text 249", 768)
    assert sorted(len(r.body["requests"]) for r in list(upstream.requests)[-3:]) == [50, 100, 100]


async def test_embed_refuses_token_ids(adapter: GeminiGenerateContent) -> None:
    with pytest.raises(InvalidRequest):
        await adapter.embed(embedding_request(input=[1, 2, 3]), model="gemini-embedding-001", deadline=time.time() + 5)
