"""What a worker tells Prometheus about its jobs (broker/metrics.py): one call per event."""

from __future__ import annotations

import time

from broker import metrics
from broker.jobs import Job
from broker.pricing import NANOS_PER_USD, Charge


def job_started(job: Job) -> None:
    metrics.QUEUE_WAIT.labels(job.provider, job.lane).observe(max(0.0, time.time() - job.created))


def job_ended(job: Job, outcome: str, service_ms: int, ttft_ms: int, charge: Charge) -> None:
    deployment = job.served_by
    metrics.JOBS.labels(deployment, outcome).inc()
    if service_ms:
        metrics.JOB_SECONDS.labels(deployment).observe(service_ms / 1000)
    if ttft_ms:
        metrics.TTFT.labels(deployment).observe(ttft_ms / 1000)
    for kind, count in (("input", charge.input_tokens), ("output", charge.output_tokens),
                        ("cached", charge.cached_tokens)):
        if count:
            metrics.TOKENS.labels(deployment, kind).inc(count)
    if charge.cost_nanos:
        metrics.COST.labels(deployment, job.tenant).inc(charge.cost_nanos / NANOS_PER_USD)


def upstream_failed(job: Job, status: int) -> None:
    metrics.UPSTREAM_ERRORS.labels(job.served_by, str(status)).inc()
