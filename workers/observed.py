"""What a worker tells Prometheus (broker/ops/metrics.py) and its log about its jobs: one call per event.

Each job attempt that ends writes one log line (logger `llm_broker.jobs`; the request id comes
from broker/ops/log_context.py): deployment, outcome, upstream status, latency, time to first token,
queue wait, tokens and cost. A failure is a WARNING, so it is logged at any level the CLI takes
but `error`; its message is redacted of upstream secrets. Prompts and answers are never logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from broker.errors import ErrorInfo
from broker.money.pricing import NANOS_PER_USD, Charge
from broker.ops import metrics, redaction
from broker.queue.jobs import Job

job_log = logging.getLogger("llm_broker.jobs")
# Each metric's children by label values: prometheus_client's `labels()` validates and joins its
# arguments and takes a lock on every call (~2% of a worker's samples at c=64, py-spy, for ~7 calls a
# job); a label set's child is the same object for the process's life (nothing here removes one), and
# prometheus_client keeps every child it made anyway: this holds no label set it does not.
_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once per process."""
    key = (id(metric), labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def job_started(job: Job) -> float:
    """How long it waited for a worker, in seconds."""
    waited = max(0.0, time.time() - job.created)
    child(metrics.QUEUE_WAIT, job.provider, job.lane).observe(waited)
    return waited


def job_ended(job: Job, outcome: str, service_ms: int, ttft_ms: int, charge: Charge, *, error: ErrorInfo | None,
              elapsed_ms: int, waited_s: float) -> None:
    deployment = job.served_by
    level = logging.WARNING if outcome == "error" else logging.INFO
    if job_log.isEnabledFor(level):
        fields = {"deployment": deployment, "tenant": job.tenant, "key": job.key, "model": job.model, "lane": job.lane,
                  "attempt": job.attempt, "calls": job.calls, "outcome": outcome,
                  "status": error.status if error is not None else 200, "latency_ms": elapsed_ms,
                  "ttft_ms": ttft_ms or None, "queue_wait_ms": round(waited_s * 1000),
                  "input_tokens": charge.input_tokens, "output_tokens": charge.output_tokens,
                  "cost_usd": charge.cost_nanos / NANOS_PER_USD if charge.cost_nanos is not None else None}
        if error is not None:
            fields.update(error_code=error.code, error=redaction.redact(error.message))
        job_log.log(level, "job %s on %s", outcome, deployment, extra={"fields": fields})
    child(metrics.JOBS, deployment, outcome).inc()
    if service_ms:
        child(metrics.JOB_SECONDS, deployment).observe(service_ms / 1000)
    if ttft_ms:
        child(metrics.TTFT, deployment).observe(ttft_ms / 1000)
    for kind, count in (("input", charge.input_tokens), ("output", charge.output_tokens),
                        ("cached", charge.cached_tokens)):
        if count:
            child(metrics.TOKENS, deployment, kind).inc(count)
    if charge.cost_nanos:
        child(metrics.COST, deployment, job.tenant).inc(charge.cost_nanos / NANOS_PER_USD)


def upstream_failed(job: Job, status: int) -> None:
    child(metrics.UPSTREAM_ERRORS, job.served_by, str(status)).inc()
