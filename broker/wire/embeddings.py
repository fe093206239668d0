"""`POST /v1/embeddings` (https://platform.openai.com/docs/api-reference/embeddings/create).

The openai SDK asks for `encoding_format: "base64"` whenever its caller sets
none and decodes each string as little-endian float32 bytes (`src/openai/resources/embeddings.py`,
`Embeddings.create`); providers return floats and the worker encodes (`encode_embedding`).
"""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from broker.wire.chat import Int64, TokenId
from broker.wire.completions import as_texts, check_homogeneous

# string | string[] | token ids | arrays of token ids (see wire.completions.Prompt)
EmbeddingInput = (Annotated[str, Meta(min_length=1)]
                  | Annotated[list[str | TokenId | list[TokenId]], Meta(max_length=2048)])


class EmbeddingRequest(msgspec.Struct, omit_defaults=True):
    model: str
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | UnsetType = UNSET
    dimensions: Annotated[int, Meta(ge=1, le=2**31 - 1)] | UnsetType = UNSET
    user: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        if isinstance(self.input, list):
            check_homogeneous(self.input, "input")
            if any(item == "" for item in self.input):
                raise ValueError("`input` strings must not be empty")

    def texts(self) -> list[str]:
        return as_texts(self.input)

    def is_token_input(self) -> bool:
        return not isinstance(self.input, str) and not isinstance(self.input[0], str)


class Embedding(msgspec.Struct):
    index: Int64
    embedding: list[float] | str  # floats, or base64 of little-endian float32
    object: str = "embedding"


class EmbeddingUsage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: Int64
    total_tokens: Int64
    cost: float | None | UnsetType = UNSET  # USD, set by the broker (broker/money/pricing.py)


class EmbeddingResponse(msgspec.Struct):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: str = "list"


def encode_embedding(vector: list[float], encoding_format: str | UnsetType) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


embedding_request_decoder = msgspec.json.Decoder(EmbeddingRequest)

__all__ = [
    "Embedding", "EmbeddingInput", "EmbeddingRequest", "EmbeddingResponse", "EmbeddingUsage",
    "embedding_request_decoder", "encode_embedding",
]
