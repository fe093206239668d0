"""Text embeddings on Vertex AI: `POST .../publishers/google/models/{model}:predict`
(https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/text-embeddings-api).

Vertex has no batchEmbedContents: its embedding models take `instances` of `{content}` and answer
`predictions` of `{embeddings: {values, statistics: {token_count}}}`, so usage is counted by Google,
not estimated. A request holds at most 250 instances, and gemini-embedding models take one
("gemini-embedding-001 supports only one input text per request"), so inputs go up in batches.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from broker.errors import UpstreamError

MAX_INSTANCES = 250


class Instance(msgspec.Struct):
    content: str


class Parameters(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True):
    # Always sent (Google's default is true): a text past the model's limit is the client's 400, as on
    # OpenAI, not an embedding of part of it.
    auto_truncate: bool
    output_dimensionality: int | UnsetType = UNSET


class PredictRequest(msgspec.Struct):
    instances: list[Instance]
    parameters: Parameters


class Statistics(msgspec.Struct):
    token_count: int = 0


class Embedding(msgspec.Struct):
    values: list[float]
    statistics: Statistics = msgspec.field(default_factory=Statistics)


class Prediction(msgspec.Struct):
    embeddings: Embedding


class PredictResponse(msgspec.Struct):
    predictions: list[Prediction] = []


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(PredictResponse)


def batch_size(model: str) -> int:
    return 1 if model.startswith("gemini-embedding") else MAX_INSTANCES


def to_predict(texts: list[str], dimensions: int | None) -> bytes:
    parameters = Parameters(auto_truncate=False, output_dimensionality=dimensions if dimensions is not None else UNSET)
    return _encoder.encode(PredictRequest([Instance(t) for t in texts], parameters))


def from_predict(body: bytes, expected: int) -> tuple[list[list[float]], int]:
    """The vectors in input order, and the tokens Google counted."""
    try:
        predictions = _decoder.decode(body).predictions
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"Vertex AI sent invalid embeddings: {exc}", retryable=True) from None
    if len(predictions) != expected:
        raise UpstreamError(f"Vertex AI returned {len(predictions)} embeddings for {expected} inputs", retryable=True)
    return [p.embeddings.values for p in predictions], sum(p.embeddings.statistics.token_count for p in predictions)
