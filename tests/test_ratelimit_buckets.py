"""Token buckets on their own (broker/limits/ratelimit.py against real Redis): estimates, settling, atomicity,
slots, and a key's limits inside its tenant's. The process-level behaviour is in test_ratelimit.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis as AsyncRedis

from broker.config import ApiKey, Tenant, hash_key
from broker.errors import RateLimited, TokensRateLimited
from broker.keys import Keys
from broker.limits.ratelimit import (
    DEFAULT_OUTPUT_TOKENS,
    EXPIRES_MEMBER,
    SLOT_GRACE_S,
    Limiter,
    estimate_request_tokens,
    go_duration,
    reconcile,
    reconcile_into,
)
from broker.queue.streams import QueueScripts
from broker.wire import ChatRequest, Message
from tests.harness import REDIS_URL


def test_go_duration_matches_openai_reset_headers() -> None:
    cases = {0: "0s", 12: "12ms", 999: "999ms", 1000: "1s", 1500: "1.5s", 17_280: "17.28s", 61_001: "1m1.001s",
             90_000: "1m30s", 360_000: "6m0s", 3_600_000: "1h0m0s", 3_725_500: "1h2m5.5s"}
    assert {ms: go_duration(ms) for ms in cases} == cases


def test_token_estimate_is_prompt_plus_output_limit_per_choice() -> None:
    def req(**kw: Any) -> ChatRequest:
        return ChatRequest(model="m", messages=[Message(role="user", content="x" * 40)], **kw)

    assert estimate_request_tokens(req()) == 13 + DEFAULT_OUTPUT_TOKENS
    assert estimate_request_tokens(req(max_tokens=100, n=3)) == 13 + 300
    assert estimate_request_tokens(req(max_completion_tokens=50, max_tokens=100)) == 13 + 50
    assert estimate_request_tokens(req(max_tokens=1_000_000)) == 13 + 4096


@pytest.fixture
async def limiter(namespace: str) -> Any:
    client = AsyncRedis.from_url(REDIS_URL)
    yield Limiter(client, Keys(namespace))
    await client.aclose()


async def slots_held(limiter: Limiter, in_flight: str) -> int:
    """An in-flight set's slots: its members but `~expires` (admit.lua)."""
    return len([m for m in await limiter.redis.zrange(in_flight, 0, -1) if m != EXPIRES_MEMBER.encode()])


async def full_in_ms(limiter: Limiter, bucket: str) -> float:
    """How long until `bucket` is full again: its stored instant (µs, server clock) from now; 0 if full."""
    stored, (seconds, micros) = await limiter.redis.get(bucket), await limiter.redis.time()
    return max(0.0, (int(stored or 0) - (seconds * 1_000_000 + micros)) / 1000)


async def remaining_tokens(limiter: Limiter, tenant: Tenant) -> int:
    try:
        headers = (await limiter.admit("t", tenant, 0, "peek", time.time() + 60)).headers
    except RateLimited as exc:  # a bucket in debt turns away even an empty request
        headers = exc.headers
    return int(headers["x-ratelimit-remaining-tokens"])


async def test_reconcile_credits_back_and_debits_the_difference(limiter: Limiter) -> None:
    tenant = Tenant(keys=[], tpm=6000)  # 100 tokens a second
    await limiter.admit("t", tenant, 3000, "a", time.time() + 60)
    await reconcile(limiter.redis, limiter.keys, "t", tenant, estimated=3000, actual=1000)
    assert 5000 <= await remaining_tokens(limiter, tenant) <= 5100
    scripts = QueueScripts(limiter.redis)
    await scripts.load()
    pipe = limiter.redis.pipeline(transaction=False)
    reconcile_into(pipe, scripts.reconcile, limiter.keys, "t", tenant, estimated=100, actual=1100)
    await pipe.execute()
    assert 4000 <= await remaining_tokens(limiter, tenant) <= 4100
    # Usage far above the estimate is a debt: the bucket stays empty (and its key alive) past a minute.
    await reconcile(limiter.redis, limiter.keys, "t", tenant, estimated=0, actual=10_000)
    assert await remaining_tokens(limiter, tenant) == 0
    assert await limiter.redis.pttl(limiter.keys.rate_tokens("t")) > 60_000
    with pytest.raises(TokensRateLimited):
        await limiter.admit("t", tenant, 1, "b", time.time() + 60)
    # A credit to a full (absent) bucket changes nothing and leaves no key behind.
    await reconcile(limiter.redis, limiter.keys, "u", tenant, estimated=500, actual=0)
    assert not await limiter.redis.exists(limiter.keys.rate_tokens("u"))


async def test_a_rejection_charges_no_bucket(limiter: Limiter) -> None:
    tenant = Tenant(keys=[], rpm=10, tpm=100)
    await limiter.admit("t", tenant, 80, "a", time.time() + 60)
    with pytest.raises(TokensRateLimited) as info:
        await limiter.admit("t", tenant, 30, "b", time.time() + 60)
    assert info.value.headers["x-ratelimit-remaining-requests"] == "9"
    admission = await limiter.admit("t", tenant, 20, "c", time.time() + 60)
    assert admission.headers["x-ratelimit-remaining-requests"] == "8"


async def test_a_crashed_processs_concurrency_slot_expires_at_its_deadline(limiter: Limiter) -> None:
    tenant = Tenant(keys=[], max_concurrent=1)
    # Never released, as if its API process died: the slot lives until the deadline (+ grace) only.
    await limiter.admit("t", tenant, 1, "lost", time.time() - SLOT_GRACE_S + 0.2)
    with pytest.raises(RateLimited):
        await limiter.admit("t", tenant, 1, "next", time.time() + 60)
    await asyncio.sleep(0.3)
    admission = await limiter.admit("t", tenant, 1, "next", time.time() + 60)
    await limiter.release(admission)
    assert await slots_held(limiter, limiter.keys.in_flight("t")) == 0


def keyed_tenant(**key_limits: int) -> Tenant:
    return Tenant(keys=[hash_key("plain"), ApiKey(key=hash_key("ci"), name="ci", **key_limits)], rpm=3, tpm=6000,
                  max_concurrent=5)


async def test_tenant_and_key_limits_are_charged_together_or_not_at_all(limiter: Limiter) -> None:
    tenant = keyed_tenant(rpm=2)
    for request in ("a", "b"):
        await limiter.admit("t", tenant, 1, request, time.time() + 60, key=tenant.api_key("ci"))
    with pytest.raises(RateLimited) as info:  # refused by the key: the tenant is not charged
        await limiter.admit("t", tenant, 1, "c", time.time() + 60, key=tenant.api_key("ci"))
    assert "of key 'ci'" in info.value.message
    plain_name = tenant.api_keys()[0].name  # a bare hash is named after its first hex digits
    assert plain_name == hash_key("plain")[7:19]
    plain = await limiter.admit("t", tenant, 1, "d", time.time() + 60, key=tenant.api_key(plain_name))
    assert plain.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(RateLimited) as info:  # now refused by the tenant
        await limiter.admit("t", tenant, 1, "e", time.time() + 60, key=tenant.api_key(plain_name))
    assert info.value.message.startswith("Rate limit reached for requests per min (RPM): Limit 3, Used 3")


async def test_a_keys_concurrency_slot_is_released_with_the_tenants(limiter: Limiter) -> None:
    tenant = keyed_tenant(max_concurrent=1)
    first = await limiter.admit("t", tenant, 1, "a", time.time() + 60, key=tenant.api_key("ci"))
    assert len(first.slots) == 2
    with pytest.raises(RateLimited) as info:
        await limiter.admit("t", tenant, 1, "b", time.time() + 60, key=tenant.api_key("ci"))
    assert info.value.message.startswith("Rate limit reached for concurrent requests of key 'ci': Limit 1, Used 1")
    await limiter.release(first)
    for key in (None, "ci"):
        assert await slots_held(limiter, limiter.keys.in_flight("t", key)) == 0


async def test_reconcile_settles_the_keys_token_bucket_too(limiter: Limiter) -> None:
    tenant = keyed_tenant(tpm=600)  # the key: 10 tokens a second; the tenant: 100
    admission = await limiter.admit("t", tenant, 400, "a", time.time() + 60, key=tenant.api_key("ci"))
    assert admission.headers["x-ratelimit-remaining-tokens"] in ("200", "201")
    await reconcile(limiter.redis, limiter.keys, "t", tenant, estimated=400, actual=100, key=tenant.api_key("ci"))
    # (A credit leaves the key's TTL as it was: the bucket's stored instant says when it is full.)
    key_state = await full_in_ms(limiter, limiter.keys.rate_tokens("t", "ci"))
    tenant_state = await full_in_ms(limiter, limiter.keys.rate_tokens("t"))
    # 100 tokens left to refill: 10 s for the key at 10/s, 1 s for the tenant at 100/s.
    assert 9_000 < key_state <= 10_000 and 900 < tenant_state <= 1_000


@pytest.mark.parametrize("limit", [1_000_000_000, 10**12, 10**15])
async def test_huge_limits_admit_tiny_requests(limiter: Limiter, limit: int) -> None:
    # One token of a 1e9 TPM bucket is 0.06 µs of refill: lost in the clock's float precision, so the
    # bucket's expiry came out as PX 0, which Redis refuses (the tenant got 503s).
    tenant = Tenant(keys=[], rpm=limit, tpm=limit, max_concurrent=limit)
    for i in range(3):
        admitted = await limiter.admit("t", tenant, 1, f"tiny-{i}", time.time() + 60)
        assert int(admitted.headers["x-ratelimit-remaining-tokens"]) >= limit - 10
        await limiter.release(admitted)


async def test_an_absurd_usage_report_caps_the_debt_instead_of_breaking_the_finish(limiter: Limiter) -> None:
    # An upstream may report any int64 of usage. Against tpm 1 the debt came out as a PX beyond what Redis
    # accepts, and the script error failed the worker's whole end-of-job pipeline (the client got nothing).
    tenant = Tenant(keys=[], tpm=1)
    await reconcile(limiter.redis, limiter.keys, "t", tenant, estimated=0, actual=10**17)
    assert await remaining_tokens(limiter, tenant) == 0
    assert 0 < await limiter.redis.pttl(limiter.keys.rate_tokens("t")) <= 366 * 86_400_000
    with pytest.raises(TokensRateLimited) as info:
        await limiter.admit("t", tenant, 1, "after", time.time() + 60)
    assert info.value.retry_after_s is not None and info.value.retry_after_s > 0


async def test_the_smallest_limits_work_too(limiter: Limiter) -> None:
    tenant = Tenant(keys=[], rpm=1, tpm=1, max_concurrent=1)
    first = await limiter.admit("t", tenant, 1, "one", time.time() + 60)
    with pytest.raises(RateLimited) as info:
        await limiter.admit("t", tenant, 1, "two", time.time() + 60)
    assert info.value.retry_after_s is not None and 0 < info.value.retry_after_s <= 60
    await limiter.release(first)


async def test_an_in_flight_sets_ttl_covers_its_latest_slot_and_is_written_once_a_minute(limiter: Limiter) -> None:
    tenant, key = Tenant(keys=[], max_concurrent=2), limiter.keys.in_flight("t")
    now = time.time()
    first = await limiter.admit("t", tenant, 1, "a", now + 30)
    expires = await limiter.redis.zscore(key, EXPIRES_MEMBER)
    ttl_at = (await limiter.redis.pexpiretime(key))
    # The set expires at `~expires`' score: the first slot's deadline (+ grace), up to the next whole minute.
    assert ttl_at == expires and expires % 60_000 == 0
    assert (now + 30 + SLOT_GRACE_S) * 1000 <= expires <= (now + 30 + SLOT_GRACE_S + 60) * 1000 + 1000
    # Two slots are the limit: `~expires` is no slot.
    await limiter.admit("t", tenant, 1, "b", now + 31)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit("t", tenant, 1, "c", now + 31)
    assert "Limit 2, Used 2" in refused.value.message
    await limiter.release(first)
    # A slot with a later deadline moves the expiry on, never back.
    await limiter.admit("t", tenant, 1, "d", now + 300)
    later = await limiter.redis.zscore(key, EXPIRES_MEMBER)
    assert later is not None and later >= (now + 300 + SLOT_GRACE_S) * 1000
    assert await limiter.redis.pexpiretime(key) == later
    assert await slots_held(limiter, key) == 2


async def test_a_previous_releases_in_flight_set_keeps_its_longer_ttl(limiter: Limiter) -> None:
    # A set written before `~expires` existed: one slot a day away, the set's TTL a day. The next
    # admission adds `~expires` for its own, nearer, deadline; the TTL stays the day (PEXPIREAT ... GT).
    tenant, key = Tenant(keys=[], max_concurrent=5), limiter.keys.in_flight("t")
    seconds, _ = await limiter.redis.time()
    await limiter.redis.zadd(key, {"old": (seconds + 86_400) * 1000})
    await limiter.redis.pexpire(key, 86_400_000)
    await limiter.admit("t", tenant, 1, "new", time.time() + 30)
    assert await limiter.redis.pttl(key) > 86_000_000
    assert await slots_held(limiter, key) == 2
