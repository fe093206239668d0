"""A job's admission: its rate limits charged and its budgets held in one script call, and the job told
what it was charged, so the worker that ends it settles exactly that.

The one way a job is admitted, whether a client sent it (api/limits.py) or a batch line became it
(broker/batches/runner.py). Raises RateLimited or OverBudget (with headers) charging nothing;
a Redis error propagates as it is, for the caller to answer or retry.
"""

from __future__ import annotations

from broker.config import ApiKey, Tenant
from broker.limits.ratelimit import Admission, Deferred, Limiter, estimate_request_tokens, scopes_of
from broker.money import budgets
from broker.money.pricing import PriceBook
from broker.queue.jobs import Job, key_tpm


def prepare(limiter: Limiter, prices: PriceBook, tenant_name: str, tenant: Tenant, key: ApiKey | None,
            job: Job) -> Admission | Deferred:
    """`admit`'s call, built but not sent, for the job's first enqueue to carry (broker/queue/streams.py);
    the job already says what it will be charged, as after `admit`. An Admission when nothing is to be."""
    request = job.request
    hold = budgets.hold_for(limiter.keys, tenant_name, tenant, key, request, prices.of(job))
    call = limiter.deferred(scopes_of(limiter.keys, tenant_name, tenant, key), estimate_request_tokens(request),
                            job.id, job.deadline, tenant_name=tenant_name, hold=hold)
    job.estimated_tokens, job.key_tpm = call.tokens, key_tpm(key)
    job.slots = _freed_at_end(job, call.slots)
    if hold is not None and hold.nanos > 0:
        job.budget_counters, job.budget_reserved = [b.counter for b in hold.budgets], hold.nanos
    return call


async def admit(limiter: Limiter, prices: PriceBook, tenant_name: str, tenant: Tenant, key: ApiKey | None,
                job: Job) -> Admission:
    """Charge `job` to its tenant's (and key `key`'s own) limits and hold its worst-case cost against
    their budgets; record on the job what the worker settles when it ends."""
    request = job.request
    hold = budgets.hold_for(limiter.keys, tenant_name, tenant, key, request, prices.of(job))
    admission = await limiter.admit(tenant_name, tenant, estimate_request_tokens(request), job.id, job.deadline,
                                    key=key, hold=hold)
    job.estimated_tokens, job.key_tpm = admission.tokens, key_tpm(key)
    job.slots = _freed_at_end(job, admission.slots)
    job.budget_counters, job.budget_reserved = admission.budget_counters, admission.budget_nanos
    return admission


def _freed_at_end(job: Job, slots: list[str]) -> list[str]:
    """The slots the job's end frees (its worker, job_end.lua): those of a job whose client waits for it. An
    async job's (or a batch line's) slot ends when it is accepted (api/limits.py, broker/batches/runner.py)."""
    return [] if job.async_ttl_s else slots
