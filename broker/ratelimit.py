"""Per-tenant and per-key limits: requests/min, tokens/min and requests in flight, atomic across API processes.

A request is held to its tenant's limits and, when its key has limits of its
own, to those too (each a `Scope`). One Lua script (`_ADMIT`, registered once per
process) checks and debits them all, so a request is admitted against *all* of
its buckets or rejected without touching any, and the script reads the Redis server's clock, so
any number of API processes share one consistent view. Buckets refill
continuously: capacity = the per-minute limit, refill = limit/60 per second.

Tokens are charged at admission from an estimate (`estimate_tokens`) and
corrected by `reconcile` / `reconcile_into` when the worker learns real usage.
The concurrency slot is a ZSET member scored by the request's deadline: the API
removes it when the response ends (`Limiter.release`), and if that process
crashed, the next admission reclaims every slot whose deadline passed.

Keys owned (broker/keys.py): `rate_requests`, `rate_tokens`, `in_flight`, per tenant and per limited key.
"""

from __future__ import annotations

import math
import time

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from broker.capabilities import Request, estimate_tokens
from broker.config import Limits, Tenant
from broker.errors import RateLimited, TokensRateLimited
from broker.keys import Keys
from broker.wire import ChatRequest, CompletionRequest

_ADMIT = """
-- Admit one request against every limit that applies to it (its tenant's, and
-- its key's when the key has its own), atomically: all buckets or none.
-- KEYS: 3 per scope: requests bucket, tokens bucket, in-flight ZSET
-- ARGV: [1] tokens, [2] request id, [3] slot TTL in ms (the request's deadline, from now),
--       [4] number of scopes, then per scope: rpm, tpm, max_concurrent (0 = no such limit)
-- Returns {admitted, reason (0 none, 1 rpm, 2 tpm, 3 concurrency), wait_ms, scope that refused (0 none),
--          then per scope: requests remaining, requests reset ms, tokens remaining, tokens reset ms, in flight}
--
-- A bucket is one number: the instant (µs, Redis server clock) at which it is
-- full again; a missing key means full. Level = limit - (full_at - now) * rate,
-- so continuous refill needs no timer, and the key's TTL is exactly the time
-- until it is full. Server TIME, not a client clock, so every API process agrees.
local WINDOW = 60000000 -- µs: a bucket refills completely in one minute
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local costs = {1, tonumber(ARGV[1])}
local scopes = {}
local reason, worst, culprit = 0, 0, 0
for s = 1, tonumber(ARGV[4]) do
  local base = 4 + (s - 1) * 3
  local scope = {limits = {tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])},
                 max_concurrent = tonumber(ARGV[base + 3]), full_at = {now, now}, in_flight = 0,
                 keys = {KEYS[(s - 1) * 3 + 1], KEYS[(s - 1) * 3 + 2], KEYS[(s - 1) * 3 + 3]}}
  scopes[s] = scope
  for i = 1, 2 do
    if scope.limits[i] > 0 then
      local stored = tonumber(redis.call('GET', scope.keys[i]) or now)
      scope.full_at[i] = math.max(stored, now)
      -- Time this request must wait for the bucket to hold its cost; 1 µs of slack for float error.
      local over = scope.full_at[i] - now + costs[i] * WINDOW / scope.limits[i] - WINDOW
      if over > 1 and over > worst then reason, worst, culprit = i, over, s end
    end
  end
  if scope.max_concurrent > 0 then
    -- Slots of requests whose deadline passed belong to crashed or stuck processes: reclaim them.
    redis.call('ZREMRANGEBYSCORE', scope.keys[3], '-inf', math.floor(now / 1000))
    scope.in_flight = redis.call('ZCARD', scope.keys[3])
    -- When a slot frees is unknowable here; a second is the retry hint.
    if scope.in_flight >= scope.max_concurrent and worst < 1000000 then reason, worst, culprit = 3, 1000000, s end
  end
end

if reason == 0 then
  local ttl = tonumber(ARGV[3])
  for _, scope in ipairs(scopes) do
    for i = 1, 2 do
      if scope.limits[i] > 0 and costs[i] > 0 then
        scope.full_at[i] = scope.full_at[i] + costs[i] * WINDOW / scope.limits[i]
        redis.call('SET', scope.keys[i], string.format('%.0f', scope.full_at[i]), 'PX',
                   math.ceil((scope.full_at[i] - now) / 1000))
      end
    end
    if scope.max_concurrent > 0 then
      redis.call('ZADD', scope.keys[3], math.floor(now / 1000) + ttl, ARGV[2])
      scope.in_flight = scope.in_flight + 1
      -- The set lives as long as its latest slot could.
      if redis.call('PTTL', scope.keys[3]) < ttl then redis.call('PEXPIRE', scope.keys[3], ttl) end
    end
  end
end

local out = {reason == 0 and 1 or 0, reason, math.ceil(worst / 1000), culprit}
for _, scope in ipairs(scopes) do
  for i = 1, 2 do
    local used = (scope.full_at[i] - now) * scope.limits[i] / WINDOW
    out[#out + 1] = math.max(0, math.floor(scope.limits[i] - used + 1e-6))
    out[#out + 1] = math.ceil((scope.full_at[i] - now) / 1000)
  end
  out[#out + 1] = scope.in_flight
end
return out
"""

# Real usage minus the estimate, applied to the tokens bucket: a credit moves
# `full_at` back (deleting the key once that is in the past), a debit moves it on
# from now, past capacity if need be, so a tenant that used more waits it off.
# KEYS: [1] tokens bucket; ARGV: [1] tpm, [2] actual - estimated.
_RECONCILE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local delta = tonumber(ARGV[2]) * 60000000 / tonumber(ARGV[1])
local full_at = tonumber(redis.call('GET', KEYS[1]) or now)
if delta > 0 then full_at = math.max(full_at, now) + delta else full_at = full_at + delta end
if full_at <= now then redis.call('DEL', KEYS[1]) return 0 end
redis.call('SET', KEYS[1], string.format('%.0f', full_at), 'PX', math.ceil((full_at - now) / 1000))
return math.ceil((full_at - now) / 1000)
"""

# Output tokens charged per choice when the client sets no max_tokens: a typical
# chat answer. An explicit limit is charged up to OUTPUT_ESTIMATE_CAP only, so
# a generous safety max_tokens does not throttle a tenant for tokens it will
# almost never use; reconciliation charges what was really produced.
DEFAULT_OUTPUT_TOKENS = 512
OUTPUT_ESTIMATE_CAP = 4096

# A crashed process's slot outlives the request's deadline by this much, so a
# response still being written at its deadline is not counted out early.
SLOT_GRACE_S = 5.0

_REASONS = {1: ("requests per min (RPM)", "rpm"), 2: ("tokens per min (TPM)", "tpm"),
            3: ("concurrent requests", "max_concurrent")}


def estimate_request_tokens(payload: Request) -> int:
    """prompt estimate (~4 chars a token, broker.capabilities) + choices × output limit.

    Output limit: `max_completion_tokens` / `max_tokens` capped at OUTPUT_ESTIMATE_CAP,
    else DEFAULT_OUTPUT_TOKENS; choices: `n` (completions: max(n, best_of)). Embeddings
    produce no output tokens.
    """
    prompt = estimate_tokens(payload)
    if not isinstance(payload, ChatRequest | CompletionRequest):
        return prompt
    limit = payload.output_limit()
    output = DEFAULT_OUTPUT_TOKENS if limit is None else min(limit, OUTPUT_ESTIMATE_CAP)
    choices = payload.n if isinstance(payload.n, int) else 1
    if isinstance(payload, CompletionRequest) and isinstance(payload.best_of, int):
        choices = max(choices, payload.best_of)
    return prompt + choices * output


def go_duration(ms: int) -> str:
    """Milliseconds as Go's time.Duration prints them, like OpenAI's reset headers: 12ms, 1.5s, 6m0s."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, frac = divmod(rest, 1000)
    text = f"{seconds}.{frac:03d}".rstrip("0") + "s" if frac else f"{seconds}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


class Scope(msgspec.Struct, frozen=True):
    """One set of buckets: a tenant's, or one of its keys' (whose own limits apply on top)."""

    limits: Limits
    requests: str  # Redis keys (broker/keys.py)
    tokens: str
    in_flight: str
    label: str  # how a rejection names it: "" for the tenant, " of key 'ci'" for a key


def scopes_of(keys: Keys, tenant_name: str, tenant: Tenant, key_name: str | None) -> list[Scope]:
    """The limits a request of this tenant, sent with this key, is held to."""
    scopes = []
    if tenant.limited():
        scopes.append(Scope(tenant, keys.rate_requests(tenant_name), keys.rate_tokens(tenant_name),
                            keys.in_flight(tenant_name), ""))
    if (key := tenant.api_key(key_name)) is not None:
        scopes.append(Scope(key, keys.rate_requests(tenant_name, key.name), keys.rate_tokens(tenant_name, key.name),
                            keys.in_flight(tenant_name, key.name), f" of key {key.name!r}"))
    return scopes


class Admission(msgspec.Struct, kw_only=True):
    """An admitted request: what it was charged and the headers its response carries."""

    tenant_name: str
    request_id: str
    tokens: int  # charged to the TPM buckets; becomes Job.estimated_tokens
    slots: list[str] = []  # in-flight ZSETs holding a slot of this request, released when it ends
    headers: dict[str, str] = {}

    @property
    def holds_slot(self) -> bool:
        return bool(self.slots)


class _ScopeState(msgspec.Struct, array_like=True):
    requests_remaining: int
    requests_reset_ms: int
    tokens_remaining: int
    tokens_reset_ms: int
    in_flight: int


def _headers(scopes: list[Scope], states: list[_ScopeState]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers (PROTOCOLS §3.3): reset = time until the bucket is full.

    With both a tenant and a key limit, each header triple shows the tighter one (fewer remaining).
    """
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        shown = [(getattr(st, f"{kind}_remaining"), getattr(st, f"{kind}_reset_ms"), limit)
                 for scope, st in zip(scopes, states)
                 if (limit := (scope.limits.rpm if kind == "requests" else scope.limits.tpm))]
        if shown:
            remaining, reset_ms, limit = min(shown, key=lambda row: (row[0], -row[1]))
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            headers[f"x-ratelimit-reset-{kind}"] = go_duration(reset_ms)
    return headers


def _rejection(scope: Scope, state: _ScopeState, reason: int, wait_ms: int, tokens: int,
               headers: dict[str, str]) -> RateLimited:
    label, field = _REASONS[reason]
    limit: int = getattr(scope.limits, field)
    if reason == 1:
        used, requested = limit - state.requests_remaining, 1
    elif reason == 2:
        used, requested = limit - state.tokens_remaining, tokens
    else:
        used, requested = state.in_flight, 1
    message = (f"Rate limit reached for {label}{scope.label}: Limit {limit}, Used {used}, Requested {requested}. "
               f"Please try again in {go_duration(wait_ms)}.")
    cls = TokensRateLimited if reason == 2 else RateLimited
    return cls(message, retry_after_s=wait_ms / 1000, headers=headers)


class Limiter:
    """One per process; the admission script is registered (and its SHA computed) once."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._admit = redis.register_script(_ADMIT)

    async def load(self) -> None:
        """Load the script up front, as QueueScripts does: the first request then never pays a NOSCRIPT
        round trip (and the dev mode's fakeredis server drops the connection after one)."""
        await self.redis.script_load(_ADMIT)

    async def admit(self, tenant_name: str, tenant: Tenant, tokens: int, request_id: str,
                    expires_at: float, *, key: str | None = None) -> Admission:
        """Charge one request of `tokens` tokens to every scope that limits it (the tenant, and the
        key named `key` if it has limits of its own), or raise RateLimited (with headers) charging nothing.

        `expires_at` (unix seconds) is the request's deadline: its concurrency slots
        are reclaimed after it (plus SLOT_GRACE_S) should this process die.
        """
        scopes = scopes_of(self.keys, tenant_name, tenant, key)
        for scope in scopes:
            if scope.limits.tpm:
                # Never ask for more than a full bucket, or the request could never be admitted;
                # reconciliation charges any excess once the real usage is known.
                tokens = min(tokens, scope.limits.tpm)
        if not scopes:
            return Admission(tenant_name=tenant_name, request_id=request_id, tokens=tokens)
        # The deadline becomes a TTL here so the script can score slots on the server's clock.
        ttl_ms = max(1, math.ceil((expires_at - time.time() + SLOT_GRACE_S) * 1000))
        limits = [v or 0 for scope in scopes
                  for v in (scope.limits.rpm, scope.limits.tpm, scope.limits.max_concurrent)]
        raw = [int(v) for v in await self._admit(
            keys=[k for scope in scopes for k in (scope.requests, scope.tokens, scope.in_flight)],
            args=[tokens, request_id, ttl_ms, len(scopes), *limits],
        )]
        admitted, reason, wait_ms, culprit = raw[:4]
        states = [_ScopeState(*raw[4 + 5 * i: 9 + 5 * i]) for i in range(len(scopes))]
        headers = _headers(scopes, states)
        if not admitted:
            raise _rejection(scopes[culprit - 1], states[culprit - 1], reason, wait_ms, tokens, headers)
        return Admission(tenant_name=tenant_name, request_id=request_id, tokens=tokens, headers=headers,
                         slots=[scope.in_flight for scope in scopes if scope.limits.max_concurrent])

    async def release(self, admission: Admission) -> None:
        """The response ended (completed, failed or the client left): free its concurrency slots."""
        if admission.slots:
            async with self.redis.pipeline(transaction=False) as pipe:
                for slots in admission.slots:
                    pipe.zrem(slots, admission.request_id)
                await pipe.execute()


async def reconcile(redis: Redis, keys: Keys, tenant_name: str, tenant: Tenant, estimated: int, actual: int,
                    *, key: str | None = None) -> None:
    """Credit back (actual < estimated) or debit (actual > estimated) the TPM buckets."""
    pipe = redis.pipeline(transaction=False)
    reconcile_into(pipe, keys, tenant_name, tenant, estimated, actual, key=key)
    if len(pipe):
        await pipe.execute()


def reconcile_into(pipe: Pipeline, keys: Keys, tenant_name: str, tenant: Tenant, estimated: int,
                   actual: int, *, key: str | None = None) -> None:
    """`reconcile` queued on an existing pipeline (the worker's end-of-job round trip).

    EVAL, not a registered script: a pipeline holding scripts spends an extra
    SCRIPT EXISTS round trip on every execute, while Redis caches an EVAL'd
    body by its SHA anyway.
    """
    if actual == estimated:
        return
    for scope in scopes_of(keys, tenant_name, tenant, key):
        if scope.limits.tpm:
            pipe.eval(_RECONCILE, 1, scope.tokens, str(scope.limits.tpm), str(actual - estimated))
