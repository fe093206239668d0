"""Per-tenant limits: requests/min, tokens/min and requests in flight, atomic across API processes.

Each limit is checked and debited by one Lua script (`_ADMIT`, registered once per
process), so a request is admitted against *all* of its tenant's buckets or
rejected without touching any, and the script reads the Redis server's clock, so
any number of API processes share one consistent view. Buckets refill
continuously: capacity = the per-minute limit, refill = limit/60 per second.

Tokens are charged at admission from an estimate (`estimate_tokens`) and
corrected by `reconcile` / `reconcile_into` when the worker learns real usage.
The concurrency slot is a ZSET member scored by the request's deadline: the API
removes it when the response ends (`Limiter.release`), and if that process
crashed, the next admission reclaims every slot whose deadline passed.

Keys owned (broker/keys.py): `rate_requests`, `rate_tokens`, `in_flight`.
"""

from __future__ import annotations

import math
import time

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from broker.capabilities import Request, estimate_tokens
from broker.config import Tenant
from broker.errors import RateLimited, TokensRateLimited
from broker.keys import Keys
from broker.wire import ChatRequest, CompletionRequest

_ADMIT = """
-- Admit one request against a tenant's limits, atomically: all buckets or none.
-- KEYS: [1] requests bucket, [2] tokens bucket, [3] in-flight ZSET
-- ARGV: [1] rpm, [2] tpm, [3] tokens, [4] max_concurrent (0 = no such limit),
--       [5] request id, [6] slot TTL in ms (the request's deadline, from now)
-- Returns {admitted, reason (0 none, 1 rpm, 2 tpm, 3 concurrency), wait_ms,
--          requests remaining, requests reset ms, tokens remaining, tokens reset ms, in flight}
--
-- A bucket is one number: the instant (µs, Redis server clock) at which it is
-- full again; a missing key means full. Level = limit - (full_at - now) * rate,
-- so continuous refill needs no timer, and the key's TTL is exactly the time
-- until it is full. Server TIME, not a client clock, so every API process agrees.
local WINDOW = 60000000 -- µs: a bucket refills completely in one minute
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local costs = {1, tonumber(ARGV[3])}
local max_concurrent = tonumber(ARGV[4])

local full_at = {now, now}
local reason, worst = 0, 0
for i = 1, 2 do
  if limits[i] > 0 then
    local stored = tonumber(redis.call('GET', KEYS[i]) or now)
    full_at[i] = math.max(stored, now)
    -- Time this request must wait for the bucket to hold its cost; 1 µs of slack for float error.
    local over = full_at[i] - now + costs[i] * WINDOW / limits[i] - WINDOW
    if over > 1 and over > worst then reason, worst = i, over end
  end
end

local in_flight = 0
if max_concurrent > 0 then
  -- Slots of requests whose deadline passed belong to crashed or stuck processes: reclaim them.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', math.floor(now / 1000))
  in_flight = redis.call('ZCARD', KEYS[3])
  -- When a slot frees is unknowable here; a second is the retry hint.
  if in_flight >= max_concurrent and worst < 1000000 then reason, worst = 3, 1000000 end
end

local admitted = 0
if reason == 0 then
  admitted = 1
  for i = 1, 2 do
    if limits[i] > 0 and costs[i] > 0 then
      full_at[i] = full_at[i] + costs[i] * WINDOW / limits[i]
      redis.call('SET', KEYS[i], string.format('%.0f', full_at[i]), 'PX', math.ceil((full_at[i] - now) / 1000))
    end
  end
  if max_concurrent > 0 then
    local ttl = tonumber(ARGV[6])
    redis.call('ZADD', KEYS[3], math.floor(now / 1000) + ttl, ARGV[5])
    in_flight = in_flight + 1
    -- The set lives as long as its latest slot could.
    if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
  end
end

local out = {admitted, reason, math.ceil(worst / 1000)}
for i = 1, 2 do
  local used = (full_at[i] - now) * limits[i] / WINDOW
  out[#out + 1] = math.max(0, math.floor(limits[i] - used + 1e-6))
  out[#out + 1] = math.ceil((full_at[i] - now) / 1000)
end
out[#out + 1] = in_flight
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


class Admission(msgspec.Struct, kw_only=True):
    """An admitted request: what it was charged and the headers its response carries."""

    tenant_name: str
    request_id: str
    tokens: int  # charged to the TPM bucket; becomes Job.estimated_tokens
    holds_slot: bool = False  # a concurrency slot to release when the response ends
    headers: dict[str, str] = {}


def _headers(tenant: Tenant, state: list[int]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers (PROTOCOLS §3.3): reset = time until the bucket is full."""
    headers: dict[str, str] = {}
    for kind, limit, remaining, reset_ms in (("requests", tenant.rpm, state[3], state[4]),
                                              ("tokens", tenant.tpm, state[5], state[6])):
        if limit:
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            headers[f"x-ratelimit-reset-{kind}"] = go_duration(reset_ms)
    return headers


def _rejection(tenant: Tenant, tokens: int, state: list[int], headers: dict[str, str]) -> RateLimited:
    reason, wait_ms = state[1], state[2]
    label, field = _REASONS[reason]
    limit: int = getattr(tenant, field)
    if reason == 1:
        used, requested = limit - state[3], 1
    elif reason == 2:
        used, requested = limit - state[5], tokens
    else:
        used, requested = state[7], 1
    message = (f"Rate limit reached for {label}: Limit {limit}, Used {used}, Requested {requested}. "
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
                    expires_at: float) -> Admission:
        """Charge one request of `tokens` tokens, or raise RateLimited (with headers) charging nothing.

        `expires_at` (unix seconds) is the request's deadline: its concurrency slot
        is reclaimed after it (plus SLOT_GRACE_S) should this process die.
        """
        if tenant.tpm:
            # Never ask for more than a full bucket, or the request could never be admitted;
            # reconciliation charges any excess once the real usage is known.
            tokens = min(tokens, tenant.tpm)
        if not (tenant.rpm or tenant.tpm or tenant.max_concurrent):
            return Admission(tenant_name=tenant_name, request_id=request_id, tokens=tokens)
        # The deadline becomes a TTL here so the script can score slots on the server's clock.
        ttl_ms = max(1, math.ceil((expires_at - time.time() + SLOT_GRACE_S) * 1000))
        state = [int(v) for v in await self._admit(
            keys=[self.keys.rate_requests(tenant_name), self.keys.rate_tokens(tenant_name),
                  self.keys.in_flight(tenant_name)],
            args=[tenant.rpm or 0, tenant.tpm or 0, tokens, tenant.max_concurrent or 0, request_id, ttl_ms],
        )]
        headers = _headers(tenant, state)
        if not state[0]:
            raise _rejection(tenant, tokens, state, headers)
        return Admission(tenant_name=tenant_name, request_id=request_id, tokens=tokens,
                         holds_slot=bool(tenant.max_concurrent), headers=headers)

    async def release(self, admission: Admission) -> None:
        """The response ended (completed, failed or the client left): free the concurrency slot."""
        if admission.holds_slot:
            await self.redis.zrem(self.keys.in_flight(admission.tenant_name), admission.request_id)


async def reconcile(redis: Redis, keys: Keys, tenant_name: str, tenant: Tenant, estimated: int, actual: int) -> None:
    """Credit back (actual < estimated) or debit (actual > estimated) the tenant's TPM bucket."""
    pipe = redis.pipeline(transaction=False)
    reconcile_into(pipe, keys, tenant_name, tenant, estimated, actual)
    if len(pipe):
        await pipe.execute()


def reconcile_into(pipe: Pipeline, keys: Keys, tenant_name: str, tenant: Tenant, estimated: int,
                   actual: int) -> None:
    """`reconcile` queued on an existing pipeline (the worker's end-of-job round trip).

    EVAL, not a registered script: a pipeline holding scripts spends an extra
    SCRIPT EXISTS round trip on every execute, while Redis caches an EVAL'd
    body by its SHA anyway.
    """
    if tenant.tpm and actual != estimated:
        pipe.eval(_RECONCILE, 1, keys.rate_tokens(tenant_name), str(tenant.tpm), str(actual - estimated))
