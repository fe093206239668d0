"""What the fake Bedrock does at `POST /model/{modelId}/invoke` for its rerankers: each model's own body,
checked strictly, scored by word overlap (rerank_scores.py) so an order means something.

    cohere.rerank-v3-5:0   {"query", "documents": [str], "top_n"?, "max_tokens_per_doc"?, "api_version": 2}
    amazon.rerank-v1:0     {"query", "documents": [str], "top_n"?}

Unknown fields are refused, as InvokeModel refuses what a model's schema lacks (400 ValidationException,
"Malformed input request"): Amazon Rerank has no `max_tokens_per_doc` and no `api_version`; Cohere's
needs `api_version` 2. Answers are `{"id", "results": [{"index", "relevance_score"}]}`, best first, cut
to `top_n`. Other models have no rerank body: a 400 as Bedrock answers a body a model cannot read.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tests.fakes.rerank_scores import overlap

RERANKERS = ("cohere.rerank-v3-5:0", "amazon.rerank-v1:0")
MAX_DOCUMENTS = 1000


class _Common(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    query: Annotated[str, Meta(min_length=1)]
    documents: Annotated[list[str], Meta(min_length=1, max_length=MAX_DOCUMENTS)]
    top_n: Annotated[int, Meta(ge=1)] | None = None


class CohereRerank(_Common, kw_only=True):
    api_version: Literal[2]
    max_tokens_per_doc: Annotated[int, Meta(ge=1, le=4096)] | None = None


class AmazonRerank(_Common, kw_only=True):
    pass


def invoke(model: str, body: Any) -> tuple[int, dict[str, Any]]:
    """(status, JSON answer); a 400's answer is `{"message": ...}`, its type ValidationException."""
    shape = CohereRerank if model.startswith("cohere.") else AmazonRerank
    try:
        req = msgspec.convert(body, shape)
    except msgspec.ValidationError as exc:
        return 400, {"message": f"Malformed input request: {exc}, please reformat your input and try again."}
    ranked = sorted(((overlap(req.query, d), i) for i, d in enumerate(req.documents)), key=lambda s: (-s[0], s[1]))
    results = [{"index": i, "relevance_score": score} for score, i in ranked[:req.top_n or len(ranked)]]
    return 200, {"id": str(uuid.uuid4()), "results": results}
