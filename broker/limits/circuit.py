"""Circuit breakers and cooldowns per deployment, shared by every API and worker process through Redis.

Workers report each failed call (`report_failure`, broker/store/lua/circuit.lua);
`enqueue.lua` reads the state as it admits a job, in the same script call, so
checking a circuit costs the request path no round trip; `finish.lua` closes
it on a success.

- *Hard* failures (5xx, 529, timeouts, refused connections, our key refused):
  `circuit.failures` in a row open the deployment's circuit for
  `circuit.open_s`, and so does a `circuit.failure_ratio` of failed calls
  (over at least `min_calls`) within `window_s` of the first recent failure.
  Then one job at a time goes through as a probe (half-open): its success
  closes the circuit, its failure reopens it.
- A 429 only *cools the deployment down* for its Retry-After (1 s without
  one): the upstream is healthy, just full, and says when to come back.
- The client's own errors (400, 404, 422) say nothing of the deployment.

A job refused by an open circuit moves on to its next candidate
(broker/routing/failover.py); if every candidate is open the client gets a 503 at
once, with a Retry-After of the soonest time one may be tried again.

Key owned (broker/keys.py): `circuit`, per provider, a field set per failing upstream model.
"""

from __future__ import annotations

from broker.config import CircuitSettings
from broker.errors import BrokerError
from broker.keys import Keys
from broker.queue.jobs import Job
from broker.queue.streams import QueueScripts
from broker.routing.failover import fails_over

# A 429 without Retry-After cools its deployment down this long.
DEFAULT_COOLDOWN_S = 1.0


def failure_kind(err: BrokerError) -> str | None:
    """'cool' for a rate limit, 'hard' for a failure of the deployment, None for the client's own error."""
    if not fails_over(err):
        return None
    return "cool" if err.status == 429 else "hard"


async def report_failure(scripts: QueueScripts, keys: Keys, settings: CircuitSettings, job: Job,
                         err: BrokerError) -> bool:
    """Count a failed call of `job`'s deployment; True if it opened the circuit."""
    kind = failure_kind(err)
    if kind is None:
        return False
    open_ms = max(1, int(settings.open_s * 1000))
    cooldown_ms = max(1, int((err.retry_after_s or DEFAULT_COOLDOWN_S) * 1000))
    opened = await scripts.circuit(
        keys=[keys.circuit(job.provider)],
        args=[job.upstream_model, kind, settings.failures, open_ms, cooldown_ms,
              max(2 * open_ms, cooldown_ms, int(settings.window_s * 1000)), settings.failure_ratio,
              int(settings.window_s * 1000), settings.min_calls],
    )
    return bool(opened)
