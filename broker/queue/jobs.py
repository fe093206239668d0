"""The Job envelope that waits on a stream, and the reply messages that come back.

A Job is msgpack on the stream, an array of its fields in their order (`array_like`): a
queue entry is held from its enqueue to its job's end, the longest-lived thing an open stream
keeps in Redis, and field names were a third of it. So, as the Reply Structs below, Job only
ever appends fields, each with a default (msgspec docs/schema-evolution: an older array reads
as the defaults of the fields it lacks). The queued form (`encode_queued`) leaves out two values
the entry has anyway: the job's id (the entry's `id` field, which pull.lua reads) and its reply
channel's namespace prefix; and its trailing defaults. A chat job of the bench: 305 B as a map,
160 B queued.

Jobs sit in Redis while API and worker versions roll independently: `decode_queued` and
`decode_job` still read the map layout of the release before (and, for a job left waiting
longer, the one before it: three optional request fields instead of one tagged payload). A
worker of the release before cannot read the queued form, so while such workers may still pull,
`queue.write_format: 1` makes APIs and workers write the map layout (broker/config/model.py).

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


class Job(msgspec.Struct, array_like=True, kw_only=True):
    """One request's journey through the broker; `payload` is what it asks of a provider.

    Fields are only ever appended, each with a default (the module's docstring says why).

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


class _MapJob(Job, array_like=False, omit_defaults=True):
    """A Job in the map layout (field names as keys) of the release before: written while
    `queue.write_format` is 1, read while such jobs may wait in a stream or a dead-letter stream."""


_FIELDS = msgspec.structs.fields(Job)
_ID = Job.__struct_fields__.index("id")
_REPLY_TO = Job.__struct_fields__.index("reply_to")
_REQUIRED = sum(f.required for f in _FIELDS)  # the fields without a default come first
# Each field's default, for trimming the trailing ones off a queued job; NODEFAULT for the required ones.
_DEFAULTS = [f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default for f in _FIELDS]
assert all(f.required for f in _FIELDS[:_REQUIRED]) and not any(f.required for f in _FIELDS[_REQUIRED:])


def _is_map(data: bytes) -> bool:
    """Whether msgpack `data` starts with a map (fixmap 0x80-0x8f, map16 0xde, map32 0xdf: the msgpack
    spec's formats), which the release before wrote a job as; this release writes an array."""
    return bool(data) and (data[0] & 0xF0 == 0x80 or data[0] in (0xDE, 0xDF))


def encode_whole(job: Job, layout: int = 2) -> bytes:
    """The whole job, its id and reply channel in it (a dead letter's): the array, or (layout 1) the map the
    release before wrote."""
    return job_encoder.encode(_MapJob(**msgspec.structs.asdict(job)) if layout == 1 else job)


def encode_queued(job: Job, replies_prefix: str, layout: int = 2) -> bytes:
    """The job as a queue entry's `job` field holds it (enqueue.lua adds its id as the `id` field).

    Layout 2: the array without the id (""), the reply channel without `replies_prefix` (every API
    process's channel starts with it: Keys.replies), and no trailing defaults. Layout 1: the whole
    job as a map, which the release before reads. `decode_queued` reads either."""
    if layout == 1:
        return encode_whole(job, layout)
    values = list(msgspec.structs.astuple(job))
    values[_ID] = ""
    instance = job.reply_to[len(replies_prefix):]
    if job.reply_to.startswith(replies_prefix) and not instance.startswith("="):
        values[_REPLY_TO] = instance
    else:  # not a channel of ours (never written so), or one like the mark: kept whole, marked "="
        values[_REPLY_TO] = "=" + job.reply_to
    end = len(values)
    while end > _REQUIRED and values[end - 1] == _DEFAULTS[end - 1]:
        end -= 1
    return job_encoder.encode(values[:end])


def decode_queued(data: bytes, job_id: str, replies_prefix: str) -> Job:
    """A job from a queue entry (`encode_queued`'s either layout, or the release before's); `job_id`
    is the entry's `id` field."""
    if not _is_map(data):
        job = _job_decoder.decode(data)
        job.id = job_id
        job.reply_to = job.reply_to[1:] if job.reply_to.startswith("=") else replies_prefix + job.reply_to
        return job
    return decode_job(data)


# The release before the tagged payload put the request in one of three optional fields; see decode_job.
_PREVIOUS_PAYLOAD_FIELDS = {"request": "chat", "completion": "completion", "embedding": "embedding"}
_map_job_decoder = msgspec.msgpack.Decoder(_MapJob)


def decode_job(data: bytes) -> Job:
    """A whole job (a dead letter's, or a queue entry's in a map layout): this release's array, the
    map of the release before, or the map of the one before that.

    That one put `request`, `completion` or `embedding` where `payload` is now; such jobs are rare
    and short-lived, so they take a slower path: decoded loosely, given the payload their field
    names, converted.
    """
    if not _is_map(data):
        return _job_decoder.decode(data)
    try:
        mapped = _map_job_decoder.decode(data)
    except msgspec.ValidationError:
        fields = msgspec.msgpack.decode(data)
        if not isinstance(fields, dict) or "payload" in fields:
            raise
        found = [(tag, fields.pop(name)) for name, tag in _PREVIOUS_PAYLOAD_FIELDS.items() if name in fields]
        if len(found) != 1:
            raise
        fields["payload"] = list(found[0])
        mapped = msgspec.convert(fields, _MapJob)
    return Job(**msgspec.structs.asdict(mapped))
reply_encoder = msgspec.msgpack.Encoder()
reply_decoder = msgspec.msgpack.Decoder(Reply)
