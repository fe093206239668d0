"""Lua scripts reach Redis as EVALSHA, never as a full EVAL (broker/store/scripts.py), and survive a SCRIPT FLUSH.

Counted with INFO commandstats on a redis-server of the test's own: the shared
Redis also serves other test runs, whose commands would blur the counts.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import httpx
import pytest
import redis

from broker.config import hash_key
from broker.keys import Keys
from tests.harness import RedisServer
from tests.stacks import StackFactory

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")
KEY = "sk-metered-0123456789"



def script_calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha")}


def full_in_ms(client: redis.Redis, bucket: str) -> float:
    """How long until a bucket is full again: its stored instant (µs, the server's clock) from now. Not its
    key's TTL: a credit (reconcile.lua) moves the instant back and leaves the TTL as it was."""
    stored, (seconds, micros) = client.get(bucket), client.time()
    return max(0.0, (int(stored or 0) - (seconds * 1_000_000 + micros)) / 1000)


def test_settling_usage_sends_evalsha_and_resends_after_a_script_flush(stack_factory: StackFactory, namespace: str,
                                                                        own_redis: RedisServer) -> None:
    # A TPM-limited tenant: every answer settles its token bucket (reconcile.lua) when the job ends.
    # At 6,000 TPM a token is 10 ms of refill: the ~515-token estimate is 5 s, the 4 tokens used 40 ms.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]},
                          redis_url=own_redis.url, tenants={"metered": {"keys": [hash_key(KEY)], "tpm": 6000}})
    base_url = stack.up("mock")
    client = redis.Redis.from_url(own_redis.url)
    tokens_key = Keys(namespace).rate_tokens("metered")

    def ask() -> None:
        reply = httpx.post(f"{base_url}/chat/completions", headers={"authorization": f"Bearer {KEY}"}, timeout=10,
                           json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200, reply.text

    for _ in range(3):
        ask()
    calls = script_calls(client)
    # On one Redis: admit+enqueue, pull, and the job's end (settle, finish, ledger) are one call each.
    assert calls["eval"] == 0 and calls["evalsha"] >= 3 * 3
    assert full_in_ms(client, tokens_key) < 1000  # settled: only the real usage is left to refill

    client.script_flush()  # as a Redis restarted without its data would be
    ask()
    assert script_calls(client)["eval"] == 0
    # The reconcile lost to NOSCRIPT was sent again: the bucket holds the real usage, not the 5 s estimate.
    # Sent again once the pipeline that carried the reply has been answered (broker/store/scripts.py
    # `resend_unknown`), so it may land a moment after the client has its answer.
    deadline = time.monotonic() + 3
    while full_in_ms(client, tokens_key) >= 1000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert full_in_ms(client, tokens_key) < 1000
