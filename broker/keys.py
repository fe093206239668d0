"""Every Redis key name the broker uses, each with its owner and bound.

All keys start with the configured namespace, so several deployments (or test
runs) can share one Redis without touching each other's data.

| key                               | type    | owner            | bound |
|-----------------------------------|---------|------------------|-------|
| {ns}:jobs:{provider}:{lane}       | stream  | API adds, worker | entries XDEL'd on finish; MAXLEN ~ cap |
| {ns}:result:{job_id}              | string  | worker           | TTL server.result_ttl_s |
| {ns}:replies:{api_instance}       | channel | API subscribes   | pub/sub: holds nothing |
"""

from __future__ import annotations

# Consumer group every worker of a provider joins; one group per stream means
# each job goes to exactly one worker.
WORKER_GROUP = "workers"

# Safety cap on a job stream (approximate trim, O(1) amortised). Finished jobs
# are deleted individually, so the stream length is the real backlog; the cap
# only matters if workers are gone for a long time, and admission control in
# front of it (429 at the door) keeps it from being reached.
STREAM_MAXLEN = 100_000

LANES = ("interactive", "default", "batch")


class Keys:
    def __init__(self, namespace: str) -> None:
        self.ns = namespace

    def jobs(self, provider: str, lane: str = "default") -> str:
        return f"{self.ns}:jobs:{provider}:{lane}"

    def result(self, job_id: str) -> str:
        return f"{self.ns}:result:{job_id}"

    def replies(self, instance: str) -> str:
        return f"{self.ns}:replies:{instance}"
