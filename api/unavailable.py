"""A Redis failure as the client sees it: a retryable 503 naming what the route keeps in Redis.

Redis is where every request waits and every resource lives, so a command that fails there
(ConnectionError, TimeoutError, a replica's READONLY during a failover) means "not now", never
"not ever": the answer is 503 `service_unavailable` with `Retry-After: 1`, which the OpenAI SDK
retries. api/app.py registers one handler for `RedisError`, so routes let it through; the few
places that cannot let it reach that handler build the same error here: a stream past its first
byte (the status is sent; the error becomes an event) and a job that was admitted but not queued
(api/dispatch.py refunds its charges first).
"""

from __future__ import annotations

from broker.errors import Unavailable

# What each resource keeps in Redis, by the path its routes start with; the inference routes'
# one Redis step a failure of which reaches the handler is their admission (a failure to queue
# is answered by api/dispatch.py, the response cache's is a miss).
_WHAT: tuple[tuple[str, str], ...] = (
    ("/v1/jobs", "The broker's job store"),
    ("/v1/files", "The broker's file store"),
    ("/v1/batches", "The broker's batch store"),
    ("/v1/usage", "The usage ledger"),
    ("/admin/", "The broker's key store (Redis)"),
    ("/v1/chat/", "The broker's rate limiter"),
    ("/v1/completions", "The broker's rate limiter"),
    ("/v1/embeddings", "The broker's rate limiter"),
)
QUEUE = "The broker's queue"


def error(what: str) -> Unavailable:
    return Unavailable(f"{what} is unavailable; please retry shortly.", retry_after_s=1)


def for_path(path: str) -> Unavailable:
    """The 503 for a request to `path` that met a Redis error."""
    what = next((name for prefix, name in _WHAT if path.startswith(prefix)), "The broker's Redis")
    return error(what)
