"""The Job envelope that waits on a stream, and the reply messages that come back.

A Job is msgpack on the stream. Jobs sit in Redis while API and worker versions
roll independently, so new fields get defaults (msgspec docs/schema-evolution).

Replies travel over pub/sub to the API process named in `Job.reply_to`:
`Chunk* (Final | Failed)`. Every reply carries the job's attempt number and a
sequence number counted from 0 per attempt, so the API can tell a gap (a lost
message) or a second attempt from a healthy stream. Reply Structs are
`array_like` (smaller, faster) and therefore only ever append fields.
"""

from __future__ import annotations

import msgspec

from broker.errors import ErrorInfo
from broker.wire import ChatRequest, CompletionRequest, EmbeddingRequest, Usage


class Job(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Exactly one of `request` (chat), `completion` (legacy) or `embedding` is set."""

    id: str
    tenant: str
    model: str  # the public name the client asked for
    provider: str  # the resolved deployment: which worker pool serves it...
    upstream_model: str  # ...and the model id that provider knows
    reply_to: str  # pub/sub channel of the waiting API process
    created: float  # unix seconds
    deadline: float  # unix seconds; past it the job is dropped, not run
    request: ChatRequest | None = None
    lane: str = "default"
    attempt: int = 1
    completion: CompletionRequest | None = None
    embedding: EmbeddingRequest | None = None
    # Tokens charged to the TPM buckets at admission; reconciled with real usage at the end.
    estimated_tokens: int = 0
    # Name of the API key that sent it (its own limits, if any, are reconciled too; the usage ledger's key).
    key: str | None = None

    @property
    def payload(self) -> ChatRequest | CompletionRequest | EmbeddingRequest:
        payload = self.request or self.completion or self.embedding
        assert payload is not None, "a job carries one request"
        return payload

    @property
    def streams(self) -> bool:
        return self.embedding is None and self.payload.stream  # type: ignore[union-attr]


class Chunk(msgspec.Struct, tag="chunk", array_like=True):
    """One or more SSE events, already JSON-encoded (the worker coalesces bursts)."""

    job_id: str
    attempt: int
    seq: int
    events: list[bytes]


class Final(msgspec.Struct, tag="final", array_like=True):
    """The job succeeded. `body` is the JSON response for non-streaming jobs, empty for streams."""

    job_id: str
    attempt: int
    seq: int
    body: bytes
    usage: Usage | None = None


class Failed(msgspec.Struct, tag="failed", array_like=True):
    job_id: str
    attempt: int
    seq: int
    error: ErrorInfo


Reply = Chunk | Final | Failed

job_encoder = msgspec.msgpack.Encoder()
job_decoder = msgspec.msgpack.Decoder(Job)
reply_encoder = msgspec.msgpack.Encoder()
reply_decoder = msgspec.msgpack.Decoder(Reply)
