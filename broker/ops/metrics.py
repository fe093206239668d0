"""Prometheus metrics (prometheus-client): what the API and the workers count, and their labels.

Labels are bounded by config, never by traffic: routes are path templates, models and deployments
are configured names, tenants come from config, statuses are HTTP codes. No job id, key or free
text is ever a label. Counting is in-process and costs microseconds; nothing here touches Redis.

The API serves them at GET /metrics (api/metrics.py), with the queue gauges read from
Redis at scrape time. `llm-broker api --workers N` runs N processes: then prometheus-client's
multiprocess mode adds theirs up (the CLI gives them a shared $PROMETHEUS_MULTIPROC_DIR). A
worker serves its own on `--metrics-port`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Latencies of LLM calls span milliseconds (a cache, an embedding) to minutes (a long answer).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# ---------------------------------------------------------------- API
REQUESTS = Counter("llm_broker_requests_total", "HTTP requests answered by the API",
                   ["route", "status", "model", "tenant"])
REQUEST_SECONDS = Histogram("llm_broker_request_duration_seconds",
                            "Time to the end of the response (a stream's whole length)", ["route", "model"],
                            buckets=LATENCY_BUCKETS)
# reason: in_flight (server.max_in_flight), rate (server.max_new_per_s) or lag (server.shed_lag_ms): api/door.py.
SHED = Counter("llm_broker_shed_total", "Requests an API process refused at its door, before any work", ["reason"])
# Each 10 ms sample of api/loop_lag.py: an idle loop reads under 1 ms (libuv's timer resolution), a
# drowning one hundreds; the buckets span both so `server.shed_lag_ms` can be chosen from them.
LOOP_LAG = Histogram("llm_broker_api_loop_lag_seconds", "How late an API process's event loop ran a 10 ms timer",
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
# `redis.durability: replicated` (broker/queue/durability.py): a WAIT that met fewer replicas than asked.
# at: enqueue (API: the job was withdrawn, its client answered 503) or end (worker: the answer went out anyway).
REPLICATION_SHORTFALL = Counter("llm_broker_replication_shortfall_total",
                                "Writes Redis WAIT found acknowledged by fewer replicas than redis.replicas", ["at"])
CACHE = Counter("llm_broker_cache_lookups_total", "Response cache lookups", ["model", "result"])

# ---------------------------------------------------------------- workers
JOBS = Counter("llm_broker_jobs_total", "Jobs ended by workers", ["deployment", "outcome"])
JOBS_IN_FLIGHT = Gauge("llm_broker_jobs_in_flight", "Jobs a worker is running", ["provider"],
                       multiprocess_mode="livesum")
QUEUE_WAIT = Histogram("llm_broker_queue_wait_seconds", "From a job's creation to a worker starting it",
                       ["provider", "lane"], buckets=LATENCY_BUCKETS)
TTFT = Histogram("llm_broker_time_to_first_token_seconds", "A streamed job's first token, from its start",
                 ["deployment"], buckets=LATENCY_BUCKETS)
JOB_SECONDS = Histogram("llm_broker_job_duration_seconds", "A job's run on a worker (upstream calls included)",
                        ["deployment"], buckets=LATENCY_BUCKETS)
TOKENS = Counter("llm_broker_tokens_total", "Tokens of ended jobs", ["deployment", "kind"])
COST = Counter("llm_broker_cost_usd_total", "Cost of ended jobs, USD", ["deployment", "tenant"])
UPSTREAM_ERRORS = Counter("llm_broker_upstream_errors_total", "Failed upstream calls", ["deployment", "status"])
FAILOVERS = Counter("llm_broker_failovers_total", "Jobs handed to their next deployment", ["deployment"])
RECLAIMED = Counter("llm_broker_jobs_reclaimed_total", "Jobs taken over from a dead worker", ["provider"])
DEAD_LETTERED = Counter("llm_broker_jobs_dead_lettered_total", "Jobs that failed on every attempt", ["provider"])
HEARTBEATS = Counter("llm_broker_worker_heartbeats_total", "Worker heartbeats sent", ["provider"])
