"""The one typed config: its Structs, from the top-level `Config` down.

One YAML file decodes into this tree of Structs. `${ENV_VAR}` references are
expanded before decoding; secrets become `Secret`, whose repr is redacted so a
config never leaks a key into a log. Unknown fields are rejected (typos are the
commonest config bug) and every error names the field path.

Config is loaded once at start-up and passed down; nothing reads the
environment at import time, so tests and `dev` mode never fight over it.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import msgspec

from broker.config.batches import BatchSettings
from broker.config.cache import CacheSettings, ModelCache
from broker.config.providers import (
    ProviderConfig,
)
from broker.config.types import Secret, Strict
from broker.routing.capabilities import CapabilityOverrides
from broker.routing.rules import Rule


class Limits(Strict):
    # Enforced across all API processes (broker/limits/ratelimit.py); None = unlimited.
    # Bounded so the Lua scripts' float arithmetic stays exact and their integer replies in range.
    rpm: Annotated[int, msgspec.Meta(ge=1, le=10**15)] | None = None
    tpm: Annotated[int, msgspec.Meta(ge=1, le=10**15)] | None = None
    max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=10**15)] | None = None  # requests in flight

    def limited(self) -> bool:
        return bool(self.rpm or self.tpm or self.max_concurrent)


class Deployment(Limits, kw_only=True):
    """One place a public model can be served: a provider plus its model id.

    Its limits (`rpm`, `tpm`, `max_concurrent`) are the upstream's own for it, held
    across every worker (broker/limits/ratelimit.py), so the broker does not provoke the
    429s it would then have to route around.
    """

    provider: str
    model: str
    # USD per million tokens; unset: the shipped table's price, or 0 if self-hosted (broker/money/pricing.py).
    # Cached input defaults to the input price.
    input_per_mtok: Annotated[float, msgspec.Meta(ge=0, le=1e6)] | None = None
    output_per_mtok: Annotated[float, msgspec.Meta(ge=0, le=1e6)] | None = None
    cached_input_per_mtok: Annotated[float, msgspec.Meta(ge=0, le=1e6)] | None = None
    # USD per 1,000 search units, for rerank models (Cohere's unit: broker/routing/capabilities.py).
    per_1k_searches: Annotated[float, msgspec.Meta(ge=0, le=1e6)] | None = None
    # Corrections to what the provider (or its profile) can do, e.g. {tools: false} for a small model.
    capabilities: CapabilityOverrides = msgspec.field(default_factory=CapabilityOverrides)
    # Share of the requests under the `weighted` strategy.
    weight: Annotated[float, msgspec.Meta(gt=0)] = 1.0


class ModelGroup(Strict, kw_only=True):
    """A public model's deployments and how to choose among them (broker/routing/router.py).

    `strategy` orders the deployments (broker/routing/strategies.py); the first serves, the
    rest are the failover order. `fallbacks` are other public models, tried after
    all of this group's deployments. `rules` send the requests they match to another
    model's group instead (broker/routing/rules.py).
    """

    strategy: Literal["priority", "weighted", "cost", "latency", "least-busy"] = "priority"
    deployments: list[Deployment]
    fallbacks: list[str] = []
    # Hedged requests (workers/hedging.py): no first token this long after a worker started the job
    # (a number of ms, or "p95" of the deployment's measured latency) → a second attempt starts on the
    # next candidate of another provider; the first to answer wins. Off unless set.
    hedge_after_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] | Literal["p95"] | None = None
    rules: list[Rule] = []
    # Its exceptions to the response cache (top-level `cache:`, which must exist): shared, ttl_s, off.
    cache: ModelCache | None = None


class Budgets(Limits):
    """Limits, and spend caps: what a tenant or a key may be held to."""

    # Spend caps in USD, per UTC day and month, held atomically across API processes (broker/money/budgets.py).
    daily_budget_usd: Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None = None
    monthly_budget_usd: Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None = None

    def budgeted(self) -> bool:
        return self.daily_budget_usd is not None or self.monthly_budget_usd is not None

    def bounded(self) -> bool:
        return self.limited() or self.budgeted()


class ApiKey(Budgets, kw_only=True):
    """A key with a name (in errors, and as the `key` the usage ledger counts by: broker/money/ledger.py)
    and limits and budgets of its own, enforced on top of its tenant's: a CI key can be held to 60 RPM
    inside a 600 RPM tenant."""

    key: str  # sha256:<64 hex>
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]  # like NAME below


class Tenant(Budgets, kw_only=True):
    # A key is its hash, or an ApiKey with a name and optional limits of its own.
    keys: list[str | ApiKey]
    # Public model names this tenant may use; empty means all.
    models: list[str] = []
    # May send `provider/model-id` to reach any model of a configured provider directly.
    passthrough: bool = False
    # Priority lane of this tenant's requests unless they send `X-Priority`.
    lane: str = "default"

    def api_keys(self) -> list[ApiKey]:
        """Every key as an ApiKey; a bare hash is named after its first hex digits."""
        return [k if isinstance(k, ApiKey) else ApiKey(key=k, name=k.removeprefix("sha256:")[:12])
                for k in self.keys]

    def api_key(self, name: str | None) -> ApiKey | None:
        """The named key if it has limits or budgets of its own (the only keys ratelimit.py and
        budgets.py need: a key without them is held to its tenant's alone)."""
        if name is None:
            return None
        return next((k for k in self.keys if isinstance(k, ApiKey) and k.name == name and k.bounded()), None)


class AdminSettings(Strict):
    """The admin API (/admin/*: api/routes/admin.py), off unless this section is present."""

    # sha256:<64 hex> forms of the admin keys (`llm-broker hash-key`); they are not tenant keys.
    keys: Annotated[list[Annotated[str, msgspec.Meta(pattern=r"^sha256:[0-9a-f]{64}$")]], msgspec.Meta(min_length=1)]
    # The console's charts (GET /console): per-minute and per-hour rollups written with the usage ledger
    # (broker/ops/rollups.py). Off, or no admin section: not one field of them is written.
    rollups: bool = True
    # How often each worker samples its provider's queues for the console's queue charts (queue_series.py).
    queue_sample_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 10.0


class ServerSettings(Strict):
    # How long a request may wait in total (queue + upstream) before a timeout error.
    # At most a week: it becomes Redis expiries (PX) and deadlines, which must stay in range.
    request_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=604_800)] = 600.0
    # SSE: hold the 200 back this long so early failures still get a real HTTP status.
    stream_first_byte_hold_s: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    # SSE comment keep-alive while a job waits (proxies drop idle connections).
    keepalive_interval_s: Annotated[float, msgspec.Meta(ge=0.1)] = 15.0  # never a busy loop of comments
    # Final results stay readable this long after a job ends.
    result_ttl_s: Annotated[int, msgspec.Meta(ge=1)] = 60  # Redis refuses SET ... EX 0
    # Larger request bodies get a 413 before they are read whole (each body is queued in Redis).
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 32 * 1024 * 1024
    # An uploaded audio file (/v1/audio/transcriptions, /translations) larger than this gets a 413; it is
    # spooled to disk, never held in memory or Redis (broker/queue/spool.py). OpenAI's own limit: 25 MB.
    max_upload_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 34)] = 25 * 1024 * 1024
    # Stream events one client may leave unread (it reads slower than its job writes); past this its
    # stream ends with an error and its job is cancelled, so a slow reader cannot grow the API's memory.
    stream_buffer_bytes: Annotated[int, msgspec.Meta(ge=65536)] = 4 * 1024 * 1024
    # Async jobs (`Prefer: respond-async`, broker/queue/async_jobs.py): how long one may take in all
    # (X-Request-Timeout may lower it), and how long its status and result stay readable after.
    async_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=604_800)] = 3600.0
    async_result_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=2_592_000)] = 86_400
    # Resumable streams (broker/queue/job_events.py): a stream's events stay this long after it ends, for
    # a client that reconnects with Last-Event-ID; a client that drops is given this long to come
    # back before its job is cancelled (0: cancel at once, as with no resumption).
    stream_resume_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 60
    stream_resume_grace_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 5.0
    # How long the API keeps an idle keep-alive connection open (uvicorn's `timeout_keep_alive`, 5 s by
    # default). It must outlast every client's own idle expiry: httpx, and so the OpenAI and Anthropic
    # SDKs, drop an idle pooled connection after 5 s (https://www.python-httpx.org/advanced/resource-limits/),
    # so with the server's 5 s too a request sent on a connection the server is closing at that instant
    # meets a connection closed without an answer (the chaos soak's "unexplained" ReadErrors). Load
    # balancers idle out after 60 s (AWS ALB's default), so 75 s, nginx's `keepalive_timeout` default.
    # Idle connections are not requests: the door below does not count them.
    keep_alive_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 75  # uvicorn takes whole seconds
    # The door (api/door.py): past this many requests in flight in one API process (open streams
    # included), a new one is refused at once with 503 + Retry-After (Anthropic's 529 on /v1/messages)
    # rather than taken on and drowned: a burst of 500 new streams a second left one process too busy
    # to accept connections, and clients met resets and connect timeouts instead (issue 22). 0: no cap.
    max_in_flight: Annotated[int, msgspec.Meta(ge=0, le=10**9)] = 2048
    # ...and past this many new requests a second per process (a token bucket of one second's worth),
    # which bounds the set-up work (auth, Redis, subscription) a burst can ask of it. 0: no cap.
    max_new_per_s: Annotated[float, msgspec.Meta(ge=0, le=10**9)] = 0
    # ...and while its event loop runs this late, smoothed (api/loop_lag.py): a process past what its
    # machine can do, measured rather than configured. 0: never on lag.
    shed_lag_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 100
    # Connections the kernel queues for the API before it accepts them (uvicorn's `backlog`, 2048 by
    # default); a burst that outruns the event loop overflows it and its clients' connections are
    # dropped or reset. The kernel caps it at net.core.somaxconn (4096 since Linux 5.4).
    listen_backlog: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 4096
    # The job-backed POSTs (/v1/chat/completions, /v1/messages, ...) go straight to their handlers
    # (api/hot_path.py), not through FastAPI's middleware and router: the same answers for a tenth less
    # API CPU. Off: through FastAPI like every other route, e.g. for FastAPI's own OpenTelemetry spans.
    hot_path: bool = True


class CircuitSettings(Strict):
    """Per deployment, shared by every process through Redis (broker/limits/circuit.py)."""

    # Consecutive failures (5xx, timeouts, refused connections or keys) that open a deployment's circuit...
    failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    # ...for this long: it is skipped (failover moves on); then one probe job at a time tries it.
    open_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Or: this share of its calls failed within `window_s` of the first recent failure, over at least
    # `min_calls` calls (an upstream failing every other call never fails `failures` times in a row).
    failure_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    window_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    min_calls: Annotated[int, msgspec.Meta(ge=1)] = 20


class QueueSettings(Strict):
    # Each lane's share of pulls while several lanes have work (smooth weighted
    # round robin): interactive gets 8 of every 13, batch still 1, so none starves.
    lane_weights: dict[str, int] = msgspec.field(
        default_factory=lambda: {"interactive": 8, "default": 4, "batch": 1})
    # Below this many waiting jobs a lane never rejects (drain-rate estimates are noisy when small).
    min_queue: Annotated[int, msgspec.Meta(ge=0)] = 64
    # Until a provider's drain rate has first been measured (it is kept in Redis from then on),
    # admission assumes each live worker finishes `concurrency` jobs per this many seconds.
    assumed_service_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # Workers refresh their liveness and their jobs' leases this often...
    heartbeat_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    # ...so a job pending this long without a refresh belongs to a dead worker and is reclaimed.
    claim_idle_s: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    # Deliveries before a job goes to the dead-letter stream and its client gets an error.
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 3
    # A worker counts as live this long after its last heartbeat (none live: 503 at the door).
    worker_ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # SIGTERM: how long a worker lets in-flight jobs finish before leaving them for reclaim.
    drain_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    # Jobs that failed through no fault of their request stay in the dead-letter stream for this
    # long (broker/queue/dead_letters.py; `llm-broker dead list`, `dead replay`)...
    dead_letter_retention_s: Annotated[float, msgspec.Meta(ge=1, le=31_536_000)] = 7 * 86_400.0
    # ...and at most about this many per provider (each holds its whole request).
    dead_letter_maxlen: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10_000
    # How queued jobs and event logs are written (broker/queue/jobs.py `encode_queued`, job_events.py): 2, as
    # this release writes them; 1, as the release before did, which its workers and APIs read. Every process
    # reads both. A rolling upgrade from the release before runs with 1 until no process of it is left, then
    # with 2, as Kafka pins `inter.broker.protocol.version` during its rolling upgrades (Kafka docs, "Upgrading").
    write_format: Literal[1, 2] = 2


class UsageSettings(Strict):
    # Days each day's usage aggregates stay in Redis (broker/money/ledger.py) after that day ends.
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=3660)] = 90
    # Per-request usage records kept for export (a Redis stream, trimmed to about this many).
    log_maxlen: Annotated[int, msgspec.Meta(ge=0, le=100_000_000)] = 100_000
    # A durable copy of those records in PostgreSQL for billing (broker/money/usage_sink.py), e.g.
    # postgresql://user:pass@host/db; the workers insert them in batches into `postgres_table`.
    postgres_url: Secret | None = None
    postgres_table: Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "llm_broker_usage"


class ResponsesSettings(Strict):
    """The Responses API's stored responses (`store`, on by default as at OpenAI): each is kept with its
    whole context, so `previous_response_id` costs one read. Memory: responses stored a day x their
    context's size x the days kept."""

    store_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=366 * 86400)] = 30 * 86400  # OpenAI keeps them 30 days


class RedisSettings(Strict):
    """How sure a write must be before a client is told of it (broker/queue/durability.py).

    `async` (Redis's own way): a write is acknowledged once the primary has it; a failover in the next
    instant can lose it. `replicated`: the API's enqueue and a worker's job end also wait, in the same
    round trip, for `replicas` replicas to acknowledge them (Redis WAIT), at most `wait_timeout_ms`.
    """

    durability: Literal["async", "replicated"] = "async"
    replicas: Annotated[int, msgspec.Meta(ge=1, le=16)] = 1
    # A replica on the same network acknowledges in well under a millisecond; past this it is lagging or
    # gone, and an enqueue is refused with 503 `not_replicated` rather than held (a bound on the wait).
    wait_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 150


class Config(Strict):
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Durability of the writes clients are told of; only the default costs nothing (RedisSettings).
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    # Prefix of every Redis key this deployment owns (see broker/keys.py).
    namespace: str = "llmb"
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    queue: QueueSettings = msgspec.field(default_factory=QueueSettings)
    circuit: CircuitSettings = msgspec.field(default_factory=CircuitSettings)
    usage: UsageSettings = msgspec.field(default_factory=UsageSettings)
    batches: BatchSettings = msgspec.field(default_factory=BatchSettings)
    responses: ResponsesSettings = msgspec.field(default_factory=ResponsesSettings)
    # The exact-match response cache (broker/cache/exact.py); off unless this section is present.
    cache: CacheSettings | None = None
    providers: dict[str, ProviderConfig] = {}
    # The list form is a `priority` group (ModelGroup) of those deployments.
    models: dict[str, list[Deployment] | ModelGroup] = {}
    tenants: dict[str, Tenant] = {}
    admin: AdminSettings | None = None

    def group(self, model: str) -> ModelGroup | None:
        """The configured public model `model`, whichever form it was written in."""
        found = self.models.get(model)
        return ModelGroup(deployments=found) if isinstance(found, list) else found


DEV_API_KEY = "sk-dev"


def hash_key(api_key: str) -> str:
    """The form keys take in config: never store a client key in clear."""
    return "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()
