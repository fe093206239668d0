"""Reranks on Bedrock through InvokeModel: pure shaping, no I/O.

    POST {endpoint}/model/{modelId}/invoke     the model's own JSON body in, its own JSON out

Bedrock hosts two rerankers, each taking Cohere's rerank body (the shape Cohere's own Bedrock client,
`cohere.BedrockClientV2`, sends through InvokeModel):
- Cohere Rerank 3.5 (`cohere.rerank-v3-5:0`): `query`, `documents` (strings), `top_n`, `max_tokens_per_doc`,
  and the `api_version: 2` Bedrock requires of it;
- Amazon Rerank 1.0 (`amazon.rerank-v1:0`): `query`, `documents`, `top_n`. It knows no
  `max_tokens_per_doc` (it chunks documents at 512 tokens itself) and no `api_version`, so neither is sent.
AWS's user guide documents both models mainly through the Agents runtime's Rerank API
(https://docs.aws.amazon.com/bedrock/latest/userguide/rerank-use.html), whose body is another shape
(`queries`, `sources`, `rerankingConfiguration`); InvokeModel takes the model's own body, which is this one.
Both answer `{"results": [{"index", "relevance_score"}], ...}`; neither reports tokens or search units, so
the worker bills Cohere's search units by its own estimate (workers/rerank.py), which is the unit AWS
prices both by (a query of up to 100 documents: https://aws.amazon.com/bedrock/pricing/).

Which body a deployment gets is decided by its model id (an inference profile's prefix or an ARN's path
stripped), not configured: the body is the model's contract.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from broker.errors import InvalidRequest, UpstreamError
from broker.money.pricing import BEDROCK_PROFILE_PREFIXES
from broker.wire.rerank import RerankRequest
from workers.providers.base import Ranked

COHERE, AMAZON = "cohere.rerank-", "amazon.rerank-"


class _CohereBody(msgspec.Struct, omit_defaults=True):
    query: str
    documents: list[str]
    api_version: int  # required, and 2: without it the model refuses the body
    top_n: int | UnsetType = UNSET
    max_tokens_per_doc: int | UnsetType = UNSET


class _AmazonBody(msgspec.Struct, omit_defaults=True):
    query: str
    documents: list[str]
    top_n: int | UnsetType = UNSET


class _Score(msgspec.Struct):
    index: int
    relevance_score: float


class _Answer(msgspec.Struct):
    results: list[_Score]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Answer)


def family(model: str) -> str:
    """`cohere.rerank-` or `amazon.rerank-` for a model id, inference profile or ARN; else a 400."""
    base = model.rsplit("/", 1)[-1]
    base = next((base[len(p):] for p in BEDROCK_PROFILE_PREFIXES if base.startswith(p)), base)
    for known in (COHERE, AMAZON):
        if base.startswith(known):
            return known
    raise InvalidRequest(f"Bedrock model {model!r} is not a reranker Bedrock hosts "
                         "(cohere.rerank-v3-5:0, amazon.rerank-v1:0)", param="model")


def shape_rerank(req: RerankRequest, *, model: str) -> bytes:
    if family(model) == COHERE:
        return _encoder.encode(_CohereBody(req.query, req.texts(), 2, top_n=req.top_n,
                                           max_tokens_per_doc=req.max_tokens_per_doc))
    return _encoder.encode(_AmazonBody(req.query, req.texts(), top_n=req.top_n))


def ranked(data: bytes) -> Ranked:
    try:
        answer = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"Bedrock sent an invalid rerank response: {exc}", retryable=True) from None
    return Ranked([(r.index, r.relevance_score) for r in answer.results])
