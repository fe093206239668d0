"""The Job envelope that waits on a stream, and the reply messages that come back.

A Job is msgpack on the stream. Jobs sit in Redis while API and worker versions
roll independently, so new fields get defaults (msgspec docs/schema-evolution), and
`decode_job` still reads the layout of the release before (three optional request
fields instead of one tagged payload) for jobs it left waiting in a stream.

Replies travel over pub/sub to the API process named in `Job.reply_to`:
`Chunk* (Final | Failed)`. Every reply carries the job's attempt number and a
sequence number counted from 0 per attempt, so the API can tell a gap (a lost
message) or a second attempt from a healthy stream. Reply Structs are
`array_like` (smaller, faster) and therefore only ever append fields.
"""

from __future__ import annotations

import msgspec

from broker.config import ApiKey
from broker.errors import ErrorInfo
from broker.queue.payloads import AnyRequest, Payload
from broker.wire import Usage


class Target(msgspec.Struct, array_like=True, frozen=True):
    """A deployment a job may be sent to: a provider's worker pool and the model id it knows."""

    provider: str
    model: str
    max_context: int = 0  # its context window in tokens, if configured (0: unknown)


class Attempt(msgspec.Struct, array_like=True, frozen=True):
    """One failed call to a deployment, kept on the job so its final error can tell them all."""

    provider: str
    model: str
    status: int  # what the client would have seen for it alone
    reason: str
    retry_after_s: float | None = None
    rate_limited: bool = False
    skipped: bool = False  # refused at the door (no live worker, circuit open): no upstream call


class Job(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One request's journey through the broker; `payload` is what it asks of a provider.

    `provider`/`upstream_model` is the deployment now serving it; `fallbacks` the
    ones it fails over to, in order (broker/routing/failover.py), and `failures` what
    was tried before. The job keeps its id, reply channel and deadline throughout.
    """

    id: str
    tenant: str
    model: str  # the public name the client asked for
    provider: str  # the resolved deployment: which worker pool serves it...
    upstream_model: str  # ...and the model id that provider knows
    reply_to: str  # pub/sub channel of the waiting API process
    created: float  # unix seconds
    deadline: float  # unix seconds; past it the job is dropped, not run
    payload: Payload
    lane: str = "default"
    attempt: int = 1
    # Tokens charged to the TPM buckets at admission; reconciled with real usage at the end.
    estimated_tokens: int = 0
    # Name of the API key that sent it (its own limits, if any, are reconciled too; the usage ledger's key).
    key: str | None = None
    fallbacks: list[Target] = []
    failures: list[Attempt] = []
    max_context: int = 0  # the current deployment's context window, if configured (0: unknown)
    # Hedged requests (workers/hedging.py): start a second attempt after this long without a first
    # token (ms; HEDGE_P95: the deployment's measured p95; 0: never)...
    hedge_after_ms: int = 0
    # ...which is this job's copy if `racing_with` names the provider of the attempt it races...
    racing_with: str = ""
    # ...and the calls raced beside this one (counted in `calls`, not in `failures`).
    hedges: int = 0
    # The model whose group serves it when one of `model`'s rules matched (broker/routing/rules.py); "": its own.
    route: str = ""
    # Budget counters its worst-case cost was reserved against (broker/money/budgets.py), settled at its end.
    budget_counters: list[str] = []
    budget_reserved: int = 0  # nano-dollars
    # An async job (`Prefer: respond-async`, broker/queue/async_jobs.py): how long its result is kept,
    # in seconds, instead of server.result_ttl_s. 0: a live request, whose client waits for it.
    async_ttl_s: int = 0
    # The client's own X-Client-Request-Id (api/request_ids.py), logged beside ours; "": none sent.
    client_request_id: str = ""
    # The TPM limit of its key's own bucket (0: none), charged at admission: the worker settles that
    # bucket from here, since a key made at run time (broker/api_keys.py) is not in its config.
    key_tpm: int = 0
    # The in-flight sets (broker/limits/ratelimit.py) holding its concurrency slot, when its client waits for
    # its end: the worker's end frees them in the call that publishes its answer (job_end.lua), so the API
    # answers without a round trip of its own. Empty for an async job (its slot ends with its 202).
    slots: list[str] = []

    @property
    def request(self) -> AnyRequest:
        return self.payload.request

    @property
    def served_by(self) -> str:
        return f"{self.provider}/{self.upstream_model}"

    @property
    def calls(self) -> int:
        """Upstream calls made for it, this one included."""
        return sum(not failure.skipped for failure in self.failures) + 1 + self.hedges

    @property
    def streams(self) -> bool:
        return self.payload.streams


def key_tpm(key: ApiKey | None) -> int:
    return (key.tpm or 0) if key is not None else 0


def key_limits(job: Job) -> ApiKey | None:
    """The key limits the worker settles the job's tokens against (those it was charged at admission)."""
    if job.key is None or not job.key_tpm:
        return None
    return ApiKey(key="", name=job.key, tpm=job.key_tpm)


HEDGE_P95 = -1  # Job.hedge_after_ms: hedge after the deployment's measured 95th percentile


class Chunk(msgspec.Struct, tag="chunk", array_like=True):
    """One or more SSE events, already JSON-encoded (the worker coalesces bursts)."""

    job_id: str
    attempt: int
    seq: int
    events: list[bytes]
    served_by: str = ""  # on a job's first chunk: "<provider>/<upstream model>"...
    calls: int = 0  # ...and how many upstream calls it took (failovers included)


class Final(msgspec.Struct, tag="final", array_like=True):
    """The job succeeded. `body` is the JSON response for non-streaming jobs, empty for streams."""

    job_id: str
    attempt: int
    seq: int
    body: bytes
    usage: Usage | None = None
    served_by: str = ""
    calls: int = 0
    # The job's concurrency slots (Job.slots) were freed before this reply was published, in the same
    # atomic call (job_end.lua): the API has nothing left to release. False (the previous release's
    # workers, a Cluster): the API frees them itself. An older API ignores the field (array_like: extra
    # trailing values are skipped).
    freed: bool = False


class Failed(msgspec.Struct, tag="failed", array_like=True):
    job_id: str
    attempt: int
    seq: int
    error: ErrorInfo
    freed: bool = False  # as Final's


Reply = Chunk | Final | Failed

job_encoder = msgspec.msgpack.Encoder()
_job_decoder = msgspec.msgpack.Decoder(Job)
# The release before this one put the request in one of three optional fields; see decode_job.
_PREVIOUS_PAYLOAD_FIELDS = {"request": "chat", "completion": "completion", "embedding": "embedding"}


def decode_job(data: bytes) -> Job:
    """A job from a stream, in this release's layout or in the previous one.

    A rolling upgrade leaves jobs the old API enqueued waiting for the new workers; those carry
    `request`, `completion` or `embedding` instead of `payload`. They are rare and short-lived,
    so they take a slower path: decoded loosely, given the payload their field names, converted.
    """
    try:
        return _job_decoder.decode(data)
    except msgspec.ValidationError:
        fields = msgspec.msgpack.decode(data)
        if not isinstance(fields, dict) or "payload" in fields:
            raise
        found = [(tag, fields.pop(name)) for name, tag in _PREVIOUS_PAYLOAD_FIELDS.items() if name in fields]
        if len(found) != 1:
            raise
        fields["payload"] = list(found[0])
        return msgspec.convert(fields, Job)
reply_encoder = msgspec.msgpack.Encoder()
reply_decoder = msgspec.msgpack.Decoder(Reply)
