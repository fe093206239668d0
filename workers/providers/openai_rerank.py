"""The rerank route OpenAI-compatible servers add beside /embeddings: pure shaping, no I/O.

vLLM (`/v1/rerank`, for cross-encoder models served with the score task:
https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html#re-rank-api), Infinity
(`/rerank`), llama.cpp server (`/v1/rerank`) and Jina all take the Cohere/Jina shape
`{model, query, documents, top_n}` and answer `{results: [{index, relevance_score, document?}],
usage: {total_tokens}}`. The path is `rerank` under the provider's `base_url`, as `embeddings` is.
Documents go as strings; the worker attaches them to the answer itself, so none are asked back.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from broker.errors import UpstreamError
from broker.wire.rerank import RerankRequest
from workers.providers.base import Ranked


class _Request(msgspec.Struct, omit_defaults=True):
    model: str
    query: str
    documents: list[str]
    top_n: int | UnsetType = UNSET
    max_tokens_per_doc: int | UnsetType = UNSET


class _Score(msgspec.Struct):
    index: int
    relevance_score: float


class _Usage(msgspec.Struct):
    total_tokens: int | None = None
    prompt_tokens: int | None = None


class _Response(msgspec.Struct):
    results: list[_Score]
    usage: _Usage | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Response)


def shape_rerank(req: RerankRequest, *, model: str) -> bytes:
    return _encoder.encode(_Request(model, req.query, req.texts(), req.top_n, req.max_tokens_per_doc))


def ranked(data: bytes) -> Ranked:
    try:
        resp = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"upstream sent an invalid rerank response: {exc}", retryable=True) from None
    usage = resp.usage or _Usage()
    tokens = usage.prompt_tokens if usage.prompt_tokens is not None else usage.total_tokens
    return Ranked([(r.index, r.relevance_score) for r in resp.results], prompt_tokens=tokens)
