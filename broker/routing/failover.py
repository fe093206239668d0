"""Failover: when a deployment fails a job, where the job goes next, and what the client hears when
nothing is left.

The API puts the job's candidates on it in order (`Job.fallbacks`, from
broker/routing/router.py); the worker that sees an attempt fail asks `next_job` and,
when it gets one, enqueues it on that deployment's queue instead of answering.
The job keeps its id, reply channel, deadline and rate-limit charges, so the
client sees one answer (or one error) whatever happened on the way.

A failure moves on only when another deployment could do better and nothing
has reached the client yet:
- 429, 5xx, 529, connection failures and timeouts: the upstream is unwell;
- 401 and 403 from the upstream: *our* key is wrong there, another may work;
- never the client's own errors (400, 404, 422, content filter): any
  deployment would refuse them the same way.
After the first chunk of a stream has been sent, a second answer cannot be
spliced onto the first: the stream ends with its error event instead.
"""

from __future__ import annotations

import random
import time

import msgspec

from broker.errors import BrokerError, RateLimited, UpstreamError
from broker.queue.jobs import Attempt, Job

# The upstreams' code for a prompt longer than the model's context window (OpenAI and compatibles).
CONTEXT_TOO_LONG = "context_length_exceeded"
# The upstream rejected our credentials: misconfiguration of that deployment, not of the request.
_OUR_KEY_REFUSED = (401, 403)
# Backoff before the n-th retry on one deployment: a random wait in [0, RETRY_BASE_S * 2**n).
RETRY_BASE_S = 0.25
# A retry needs at least this much of the deadline left after its wait, or it is not worth starting.
RETRY_MARGIN_S = 1.0
# A longer Retry-After is passed on to the client rather than waited out here: holding a request for
# a minute on an upstream's say-so is the client's call (the SDKs honour Retry-After themselves).
MAX_RETRY_WAIT_S = 5.0


def fails_over(err: BrokerError) -> bool:
    """Whether another deployment might succeed where this one failed."""
    if not isinstance(err, UpstreamError):
        return False
    return err.retryable or err.upstream_status in _OUR_KEY_REFUSED


def attempt_of(job: Job, err: BrokerError) -> Attempt:
    reason = err.message if len(err.message) <= 300 else err.message[:297] + "..."
    return Attempt(job.provider, job.upstream_model, err.status, reason, err.retry_after_s,
                   rate_limited=err.status == 429, skipped=not isinstance(err, UpstreamError))


def next_job(job: Job, err: BrokerError) -> Job | None:
    """The job as it goes to its next candidate after `err`, or None if it should fail here.

    A prompt too long for this deployment skips to the next one known to have a larger context
    window; none such: the client's 400 stands.
    """
    if err.code == CONTEXT_TOO_LONG and job.max_context:
        larger = next((i for i, t in enumerate(job.fallbacks) if t.max_context > job.max_context), None)
        if larger is None:
            return None
        return advance(msgspec.structs.replace(job, fallbacks=job.fallbacks[larger:]), err)
    return advance(job, err) if fails_over(err) else None


def advance(job: Job, err: BrokerError) -> Job | None:
    """`job` moved to its next candidate with `err` recorded against the current one; None if none is left."""
    if not job.fallbacks:
        return None
    target, rest = job.fallbacks[0], job.fallbacks[1:]
    return msgspec.structs.replace(job, provider=target.provider, upstream_model=target.model, fallbacks=rest,
                                   failures=[*job.failures, attempt_of(job, err)], attempt=1,
                                   max_context=target.max_context)


def retry_wait(job: Job, err: BrokerError, retries_done: int, max_retries: int) -> float | None:
    """Seconds to wait before calling the same deployment again, or None: move on (or fail) instead.

    Only when no other deployment is left (moving on is the quicker answer), and never for a hedge
    (workers/hedging.py: the attempt it races is still running). Exponential backoff with
    full jitter (no synchronised retry waves), never shorter than the upstream's Retry-After, never
    longer than MAX_RETRY_WAIT_S, and never a wait that would run into the request's deadline.
    """
    if job.fallbacks or job.racing_with or retries_done >= max_retries or not (isinstance(err, UpstreamError) and err.retryable):
        return None
    wait = random.uniform(0, RETRY_BASE_S * 2 ** retries_done)
    if err.retry_after_s is not None:
        wait = max(wait, err.retry_after_s)
    if wait > MAX_RETRY_WAIT_S or time.time() + wait + RETRY_MARGIN_S >= job.deadline:
        return None
    return wait


def final_error(job: Job, err: BrokerError) -> BrokerError:
    """What the client hears when the last candidate failed with `err` after `job.failures`.

    One error that lists every attempt. If all of them were rate limits, it is a
    429 whose Retry-After is the soonest any deployment frees up; otherwise it
    keeps the last failure's class and status (502/503/504), and its retryability.
    """
    if not job.failures:
        return err
    attempts = [*job.failures, attempt_of(job, err)]
    listed = "; ".join(f"{a.provider}/{a.model}: {a.status} {a.reason}" for a in attempts)
    message = f"All {len(attempts)} attempts failed: {listed}"
    waits = [a.retry_after_s for a in attempts if a.retry_after_s is not None]
    soonest = min(waits) if len(waits) == len(attempts) else err.retry_after_s
    if all(a.rate_limited for a in attempts):
        return RateLimited(message, retry_after_s=min(waits) if waits else None)
    # E.g. every circuit open: a 503 whose Retry-After is when the first may be tried again.
    return type(err)(message, param=err.param, code=err.code, retry_after_s=soonest, retryable=err.retryable,
                     status=err.status, innererror=err.innererror)
