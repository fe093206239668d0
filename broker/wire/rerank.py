"""`POST /v1/rerank`: the Cohere/Jina shape that vLLM, Infinity, TEI's routers and LiteLLM also serve.

Request (https://docs.cohere.com/v1/reference/rerank, https://jina.ai/reranker/,
vLLM's `RerankRequest` in `vllm/entrypoints/openai/protocol.py`): `model`, `query`, `documents` as
strings or `{"text": ...}` objects, `top_n`, `return_documents`, `max_tokens_per_doc`. The answer
carries both usage spellings clients read: `usage` (`total_tokens`, as vLLM and Jina answer, plus
the broker's `cost`) and Cohere's `meta.billed_units.search_units`.

Like the rest of broker/wire, this module is imported by its name, not re-exported from the package.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, UnsetType

from broker.wire.chat import Int64

# Cohere's v1 endpoint refused more (documents x chunks > 10,000); its v2 docs recommend at most 1,000.
MAX_DOCUMENTS = 10_000


class RerankDocument(msgspec.Struct):
    text: str


class RerankRequest(msgspec.Struct, omit_defaults=True):
    model: str
    query: Annotated[str, Meta(min_length=1)]
    documents: Annotated[list[str | RerankDocument], Meta(max_length=MAX_DOCUMENTS)]
    top_n: Annotated[int, Meta(ge=1, le=2**31 - 1)] | UnsetType = UNSET
    return_documents: bool | UnsetType = UNSET
    max_tokens_per_doc: Annotated[int, Meta(ge=1, le=2**31 - 1)] | UnsetType = UNSET

    def __post_init__(self) -> None:
        # msgspec turns these into 400s naming the field (api/decode.py).
        if not self.documents:
            raise ValueError("`documents` must hold at least one document")
        if any(not text.strip() for text in self.texts()):
            raise ValueError("`documents` must not hold empty documents")

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]

    def wanted(self) -> int:
        """How many results the client gets: `top_n`, at most one per document (Cohere and vLLM clamp too)."""
        count = len(self.documents)
        return min(self.top_n, count) if isinstance(self.top_n, int) else count


class RerankResult(msgspec.Struct, omit_defaults=True):
    index: Int64
    relevance_score: float
    document: RerankDocument | UnsetType = UNSET


class RerankUsage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: Int64
    total_tokens: Int64
    search_units: Int64
    cost: float | None | UnsetType = UNSET  # USD, set by the broker (broker/money/pricing.py)


class BilledUnits(msgspec.Struct):
    search_units: Int64


class RerankMeta(msgspec.Struct):
    billed_units: BilledUnits


class RerankResponse(msgspec.Struct):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    meta: RerankMeta


rerank_request_decoder = msgspec.json.Decoder(RerankRequest)
