"""Per-tenant and per-key limits: requests/min, tokens/min and requests in flight, atomic across API processes.

A request is held to its tenant's limits and, when its key has limits of its
own, to those too (each a `Scope`). One Lua script (`_ADMIT`, registered once per
process) checks and debits them all, so a request is admitted against *all* of
its buckets or rejected without touching any, and the script reads the Redis server's clock, so
any number of API processes share one consistent view. Buckets refill
continuously: capacity = the per-minute limit, refill = limit/60 per second.

Tokens are charged at admission from an estimate (`estimate_tokens`) and
corrected by `reconcile` / `reconcile_into` when the worker learns real usage.
The concurrency slot is a ZSET member scored by the request's deadline: the job's end removes it
(job_end.lua, on one Redis), or the API when the response ends otherwise (`Limiter.release`), and if
that process crashed, the next admission at the limit reclaims every slot whose deadline passed. The set
also holds `~expires`, scored by its own expiry, so that its TTL is lengthened about once a minute
rather than with every slot (admit.lua): `EXPIRES_MEMBER`, the one member that is no slot.

Keys owned (broker/keys.py): `rate_requests`, `rate_tokens`, `in_flight`, per tenant and per limited key.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from broker.config import ApiKey, Deployment, Limits, Tenant
from broker.errors import RateLimited, TokensRateLimited
from broker.keys import Keys
from broker.money import budgets
from broker.routing.capabilities import DEFAULT_OUTPUT_TOKENS, Request, estimate_tokens
from broker.store.scripts import Queued, evalsha_into, lua_script
from broker.wire import ChatRequest, CompletionRequest

_ADMIT = lua_script("admit")  # every limit and budget of a request: all charged or none
_UNHOLD = lua_script("unhold")  # budget holds given back (Limiter.refund)
RECONCILE = lua_script("reconcile")  # a tokens bucket settled with the real usage (QueueScripts.reconcile)

# Output tokens are charged per choice at DEFAULT_OUTPUT_TOKENS (broker/routing/capabilities.py) when the
# client sets no max_tokens. An explicit limit is charged up to OUTPUT_ESTIMATE_CAP only, so
# a generous safety max_tokens does not throttle a tenant for tokens it will
# almost never use; reconciliation charges what was really produced.
OUTPUT_ESTIMATE_CAP = 4096

# A crashed process's slot outlives the request's deadline by this much, so a
# response still being written at its deadline is not counted out early.
SLOT_GRACE_S = 5.0

# The one member of an in-flight set that is no slot (admit.lua's EXPIRES).
EXPIRES_MEMBER = "~expires"

_REASONS = {1: ("requests per min (RPM)", "rpm"), 2: ("tokens per min (TPM)", "tpm"),
            3: ("concurrent requests", "max_concurrent")}


def estimate_request_tokens(payload: Request) -> int:
    """prompt estimate (~4 chars a token, broker.routing.capabilities) + choices × output limit.

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


def scopes_of(keys: Keys, tenant_name: str, tenant: Tenant, key: ApiKey | None) -> list[Scope]:
    """The limits a request of this tenant, sent with this key, is held to.

    `key` is the key's own limits (`Principal.key`), not looked up here: a key made at run time
    (broker/api_keys.py) is not in the tenant's config.
    """
    scopes = []
    if tenant.limited():
        scopes.append(Scope(tenant, keys.rate_requests(tenant_name), keys.rate_tokens(tenant_name),
                            keys.in_flight(tenant_name), ""))
    if key is not None and key.limited():
        scopes.append(Scope(key, keys.rate_requests(tenant_name, key.name), keys.rate_tokens(tenant_name, key.name),
                            keys.in_flight(tenant_name, key.name), f" of key {key.name!r}"))
    return scopes


class Charge(msgspec.Struct, array_like=True, frozen=True):
    """What one bucket was debited: refunded whole if the request is refused after all."""

    bucket: str  # Redis key
    limit: int  # per minute
    cost: int  # 1 request, or the estimated tokens


class Admission(msgspec.Struct, kw_only=True):
    """An admitted request: what it was charged and the headers its response carries."""

    tenant_name: str
    request_id: str
    tokens: int  # charged to the TPM buckets; becomes Job.estimated_tokens
    slots: list[str] = []  # in-flight ZSETs holding a slot of this request, released when it ends
    charges: list[Charge] = []
    budget_counters: list[str] = []  # budgets (broker/money/budgets.py) holding `budget_nanos` for it
    budget_nanos: int = 0
    headers: dict[str, str] = {}

    @property
    def holds_slot(self) -> bool:
        return bool(self.slots)


class Deferred:
    """An admit.lua call built but not sent (`Limiter.deferred`): its KEYS and ARGV, the tokens it charges,
    and, once `settle` has read its answer, the Admission."""

    __slots__ = ("keys", "args", "tokens", "slots", "_read", "admission")

    def __init__(self, keys: list[str], args: list[Any], tokens: int, slots: list[str],
                 read: Callable[[list[Any]], Admission]) -> None:
        self.keys, self.args, self.tokens, self.slots, self._read = keys, args, tokens, slots, read
        self.admission: Admission | None = None

    def settle(self, answer: list[Any]) -> Admission:
        """The Admission admit.lua's `answer` makes, or RateLimited / OverBudget, charging nothing."""
        self.admission = self._read(answer)
        return self.admission


class _ScopeState(msgspec.Struct, array_like=True):
    requests_remaining: int
    requests_reset_ms: int
    tokens_remaining: int
    tokens_reset_ms: int
    in_flight: int


def _headers(scopes: list[Scope], states: list[_ScopeState]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers (https://platform.openai.com/docs/guides/rate-limits, "Rate limits in
    headers"): reset = time until the bucket is full again, as a Go duration.

    With both a tenant and a key limit, each header triple shows the tighter one (fewer remaining).
    """
    pairs = list(zip(scopes, states))
    headers: dict[str, str] = {}
    for kind, rows in (
        ("requests", [(st.requests_remaining, st.requests_reset_ms, sc.limits.rpm) for sc, st in pairs if sc.limits.rpm]),
        ("tokens", [(st.tokens_remaining, st.tokens_reset_ms, sc.limits.tpm) for sc, st in pairs if sc.limits.tpm]),
    ):
        if rows:
            remaining, reset_ms, limit = min(rows, key=lambda row: (row[0], -row[1]))
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
        self._unhold = redis.register_script(_UNHOLD)
        self._settle = redis.register_script(RECONCILE)  # EVALSHA, loading itself after a NOSCRIPT

    async def load(self) -> None:
        """Load the script up front, as QueueScripts does: the first request then never pays a NOSCRIPT
        round trip (and the dev mode's fakeredis server drops the connection after one)."""
        for script in self.named().values():
            await self.redis.script_load(script.script)

    def named(self) -> dict[str, AsyncScript]:
        return {"admit": self._admit, "unhold": self._unhold}

    async def admit(self, tenant_name: str, tenant: Tenant, tokens: int, request_id: str,
                    expires_at: float, *, key: ApiKey | None = None, hold: budgets.Hold | None = None) -> Admission:
        """Charge one request of `tokens` tokens to every scope that limits it (the tenant, and its
        key `key` if it has limits of its own) and hold `hold` against its budgets, or raise
        RateLimited / OverBudget (with headers) charging nothing.

        `expires_at` (unix seconds) is the request's deadline: its concurrency slots and budget holds
        are given back after it (plus SLOT_GRACE_S) should its job never end.
        """
        return await self.admit_scopes(scopes_of(self.keys, tenant_name, tenant, key), tokens, request_id,
                                       expires_at, tenant_name=tenant_name, hold=hold)

    async def admit_call(self, deployment: Deployment, tokens: int, request_id: str,
                         expires_at: float) -> Admission:
        """Charge one upstream call to a deployment's own limits (workers, just before the call)."""
        where = (deployment.provider, deployment.model)
        scope = Scope(deployment, self.keys.deployment_rate_requests(*where), self.keys.deployment_rate_tokens(*where),
                      self.keys.deployment_in_flight(*where),
                      f" of deployment {deployment.provider}/{deployment.model}")
        return await self.admit_scopes([scope], tokens, request_id, expires_at, tenant_name="")

    async def admit_scopes(self, scopes: list[Scope], tokens: int, request_id: str, expires_at: float, *,
                           tenant_name: str, hold: budgets.Hold | None = None) -> Admission:
        call = self.deferred(scopes, tokens, request_id, expires_at, tenant_name=tenant_name, hold=hold)
        if isinstance(call, Admission):
            return call
        return call.settle(await self._admit(keys=call.keys, args=call.args))

    def deferred(self, scopes: list[Scope], tokens: int, request_id: str, expires_at: float, *,
                 tenant_name: str, hold: budgets.Hold | None = None) -> Admission | Deferred:
        """admit_scopes' admit.lua call, built but not sent: for a caller that sends it within a script of
        its own (broker/queue/streams.py: with the job's first enqueue), then has it `settle` the answer.
        An Admission at once when there is nothing to charge."""
        for scope in scopes:
            if scope.limits.tpm:
                # Never ask for more than a full bucket, or the request could never be admitted;
                # reconciliation charges any excess once the real usage is known.
                tokens = min(tokens, scope.limits.tpm)
        if not scopes and hold is None:
            return Admission(tenant_name=tenant_name, request_id=request_id, tokens=tokens)
        # The deadline becomes a TTL here so the script can score slots on the server's clock.
        ttl_ms = max(1, math.ceil((expires_at - time.time() + SLOT_GRACE_S) * 1000))
        limits = [v or 0 for scope in scopes
                  for v in (scope.limits.rpm, scope.limits.tpm, scope.limits.max_concurrent)]
        return Deferred([k for scope in scopes for k in (scope.requests, scope.tokens, scope.in_flight)]
                        + (hold.keys() if hold else []),
                        [tokens, request_id, ttl_ms, len(scopes), *limits, *(hold.args() if hold else [])],
                        tokens, slots_of(scopes), lambda answer: _admission(scopes, tokens, request_id, tenant_name, hold, answer))

    async def end_call(self, deployment: Deployment, admission: Admission, actual_tokens: int | None) -> None:
        """A call admitted by `admit_call` is over: free its slot, settle its tokens with the real usage."""
        await self.release(admission)
        if deployment.tpm and actual_tokens is not None and actual_tokens != admission.tokens:
            bucket = self.keys.deployment_rate_tokens(deployment.provider, deployment.model)
            await self._settle(keys=[bucket], args=[deployment.tpm, actual_tokens - admission.tokens])

    async def refund(self, admission: Admission) -> None:
        """The request was refused before anything was queued (no worker, queue full, Redis down):
        give back every bucket's charge and its slots, as if it had never been admitted."""
        for charge in admission.charges:  # the settlement script, run backwards: the whole charge credited
            await self._settle(keys=[charge.bucket], args=[charge.limit, -charge.cost])
        if admission.budget_counters:
            await self._unhold(keys=[k for c in admission.budget_counters for k in (c, Keys.budget_holds(c))],
                               args=[f"{admission.request_id}:{admission.budget_nanos}"])
        await self.release(admission)

    async def release(self, admission: Admission) -> None:
        """The response ended (completed, failed or the client left): free its concurrency slots."""
        if admission.slots:
            async with self.redis.pipeline(transaction=False) as pipe:
                for slots in admission.slots:
                    pipe.zrem(slots, admission.request_id)
                await pipe.execute()


def slots_of(scopes: list[Scope]) -> list[str]:
    """The in-flight sets an admission of these scopes takes a slot in."""
    return [scope.in_flight for scope in scopes if scope.limits.max_concurrent]


def _admission(scopes: list[Scope], tokens: int, request_id: str, tenant_name: str,
               hold: budgets.Hold | None, answer: list[Any]) -> Admission:
    """What admit.lua's answer means: the Admission, or RateLimited / OverBudget (with headers)."""
    raw = [int(v) for v in answer]
    admitted, reason, wait_ms, culprit = raw[:4]
    states = [_ScopeState(*raw[4 + 5 * i: 9 + 5 * i]) for i in range(len(scopes))]
    headers = _headers(scopes, states)
    if hold is not None:
        headers.update(budgets.remaining_header(raw[-1]))
    if not admitted:
        if reason == 4 and hold is not None:
            raise budgets.over_budget(hold, culprit, raw[-1], headers)
        raise _rejection(scopes[culprit - 1], states[culprit - 1], reason, wait_ms, tokens, headers)
    charges = [Charge(bucket, limit, cost) for scope in scopes
               for bucket, limit, cost in ((scope.requests, scope.limits.rpm, 1),
                                           (scope.tokens, scope.limits.tpm, tokens))
               if limit and cost > 0]
    admission = Admission(tenant_name=tenant_name, request_id=request_id, tokens=tokens, headers=headers,
                          slots=slots_of(scopes),
                          charges=charges)
    if hold is not None and hold.nanos > 0:
        admission.budget_counters, admission.budget_nanos = [b.counter for b in hold.budgets], hold.nanos
    return admission


async def reconcile(redis: Redis, keys: Keys, tenant_name: str, tenant: Tenant, estimated: int, actual: int,
                    *, key: ApiKey | None = None) -> None:
    """Credit back (actual < estimated) or debit (actual > estimated) the TPM buckets."""
    for bucket, tpm, delta in settlements(keys, tenant_name, tenant, estimated, actual, key=key):
        await redis.register_script(RECONCILE)(keys=[bucket], args=[tpm, delta])


def settlements(keys: Keys, tenant_name: str, tenant: Tenant, estimated: int, actual: int, *,
                key: ApiKey | None = None) -> list[tuple[str, int, int]]:
    """reconcile.lua's calls for a job's real usage: (tokens bucket, its tpm, actual - estimated) each."""
    if actual == estimated:
        return []
    return [(scope.tokens, scope.limits.tpm, actual - estimated)
            for scope in scopes_of(keys, tenant_name, tenant, key) if scope.limits.tpm]


def reconcile_into(pipe: Pipeline, script: AsyncScript, keys: Keys, tenant_name: str, tenant: Tenant,
                   estimated: int, actual: int, *, key: ApiKey | None = None) -> list[Queued]:
    """`reconcile` queued on an existing pipeline (the worker's end-of-job round trip), as EVALSHA of
    `script` (reconcile.lua, loaded at start); the caller resends the calls if Redis lost the script.
    """
    return [evalsha_into(pipe, script, [bucket], [tpm, delta])
            for bucket, tpm, delta in settlements(keys, tenant_name, tenant, estimated, actual, key=key)]
