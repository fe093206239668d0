"""Per-tenant and per-key RPM / TPM / concurrency limits: real Redis, real API and worker processes, the official SDK."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from broker.config import hash_key
from broker.keys import Keys
from broker.limits.ratelimit import EXPIRES_MEMBER
from tests.harness import REDIS_URL
from tests.stacks import StackFactory

TENANTS: dict[str, dict[str, Any]] = {
    "burst": {"rpm": 60},
    "tokens": {"tpm": 1000},
    "conc": {"max_concurrent": 2},
    "leaver": {"max_concurrent": 2},
    "refused": {"rpm": 2, "tpm": 3000, "max_concurrent": 1},
    "headers": {"rpm": 60, "tpm": 10000},
    "sdk": {"rpm": 1},
    "settle": {"tpm": 100000},
    "free": {},
    "keyed": {"rpm": 60},  # plus the `ci` key, held to 2 RPM of its own
}
CI_KEY = "sk-keyed-ci-0123456789"
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


def key_of(tenant: str) -> str:
    return f"sk-{tenant}-0123456789"


class Deployment:
    def __init__(self, urls: list[str], namespace: str) -> None:
        self.urls = urls
        self.keys = Keys(namespace)
        self.redis = redis.Redis.from_url(REDIS_URL)

    def in_flight(self, tenant: str) -> int:
        """Slots held: the set's members but `~expires` (admit.lua)."""
        return len([m for m in self.redis.zrange(self.keys.in_flight(tenant), 0, -1) if m != EXPIRES_MEMBER.encode()])

    def full(self, tenant: str) -> bool:
        """The tenant's RPM and TPM buckets are full: absent, or holding an instant past (a credit, as a
        refund, moves it back and leaves the key until its TTL: reconcile.lua)."""
        seconds, micros = self.redis.time()
        return all(int(self.redis.get(bucket) or 0) <= seconds * 1_000_000 + micros
                   for bucket in (self.keys.rate_requests(tenant), self.keys.rate_tokens(tenant)))

    def wait_for(self, condition: Any, timeout_s: float = 5) -> None:
        end = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < end, "condition not met in time"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def deployment(module_stack_factory: StackFactory, module_namespace: str) -> Iterator[Deployment]:
    stack = module_stack_factory(
        {"mock": {"kind": "mock", "tokens": 4}, "slow": {"kind": "mock", "tokens": 4, "first_token_delay_s": 0.5,
                                                        "token_delay_s": 0.15},
         "unserved": {"kind": "mock"}},  # no worker ever serves it
        {"mock-chat": [{"provider": "mock", "model": "m"}], "slow-chat": [{"provider": "slow", "model": "s"}],
         "unserved-chat": [{"provider": "unserved", "model": "u"}]},
        tenants={name: {"keys": [hash_key(key_of(name))]
                        + ([{"key": hash_key(CI_KEY), "name": "ci", "rpm": 2}] if name == "keyed" else []),
                        **limits} for name, limits in TENANTS.items()},
    )
    stack.up("mock", "slow", apis=(1, 1))
    urls = list(stack.base_urls)  # two API processes sharing the buckets
    yield Deployment(urls, module_namespace)


def chat(url: str, tenant: str, client: httpx.AsyncClient, **body: Any) -> Any:
    return client.post(f"{url}/chat/completions", headers={"authorization": f"Bearer {key_of(tenant)}"},
                       json={"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}], **body})


class Raw:
    def __init__(self, port: int, status: int, head: str, body: bytes) -> None:
        self.port, self.status_code, self.body = port, status, body
        self.headers = dict(line.split(": ", 1) for line in head.lower().split("\r\n")[1:])

    def json(self) -> Any:
        return json.loads(self.body)


async def burst(urls: list[str], tenant: str, count: int) -> list[Raw]:
    """`count` chat requests written at once on connections opened beforehand.

    A bucket refills while a burst is in flight (1 request a second at 60 RPM), so
    "exactly 60" needs the requests to reach the servers within well under a
    second; an HTTP client library spends milliseconds of CPU per request, this
    only writes prepared bytes.
    """
    body = json.dumps({"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}).encode()
    ports = [httpx.URL(url).port or 80 for url in urls]
    conns = [(ports[i % len(ports)], *await asyncio.open_connection("127.0.0.1", ports[i % len(ports)]))
             for i in range(count)]
    for port, _reader, writer in conns:
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
                     f"authorization: Bearer {key_of(tenant)}\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)

    async def answer(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Raw:
        head, _, rest = (await reader.read()).partition(b"\r\n\r\n")  # the server closes after one response
        writer.close()
        return Raw(port, int(head.split()[1]), head.decode(), rest)

    return await asyncio.gather(*(answer(*conn) for conn in conns))


def test_60_rpm_admits_exactly_60_of_200_concurrent_requests_across_two_api_processes(deployment: Deployment) -> None:
    responses = asyncio.run(burst(deployment.urls, "burst", 200))
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    # Each process got 100 requests: limits counted per process would have admitted 120.
    assert {r.port for r in responses} == {httpx.URL(u).port for u in deployment.urls}
    assert (len(ok), len(limited)) == (60, 140)
    for r in limited:
        assert r.json()["error"]["type"] == "requests"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert r.json()["error"]["message"].startswith("Rate limit reached for requests per min (RPM): Limit 60, ")
        assert int(r.headers["retry-after"]) >= 1
        assert 0 < int(r.headers["retry-after-ms"]) <= 1000 * int(r.headers["retry-after"])
        assert r.headers["x-ratelimit-limit-requests"] == "60"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert GO_DURATION.match(r.headers["x-ratelimit-reset-requests"])
    for r in ok:
        assert r.headers["x-ratelimit-limit-requests"] == "60"


def test_a_request_estimated_above_the_remaining_tokens_gets_429_tokens(deployment: Deployment) -> None:
    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            # 3 prompt tokens + max_tokens 600 = 603; held in flight, so no reconciliation credits it back early.
            first = asyncio.create_task(chat(deployment.urls[0], "tokens", client, model="slow-chat", max_tokens=600))
            await asyncio.to_thread(deployment.wait_for,
                                    lambda: deployment.redis.exists(deployment.keys.rate_tokens("tokens")))
            second = await chat(deployment.urls[1], "tokens", client, max_tokens=600)
            return await first, second

    first, second = asyncio.run(main())
    assert first.status_code == 200
    assert second.status_code == 429
    error = second.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert re.match(r"Rate limit reached for tokens per min \(TPM\): Limit 1000, Used 60[23], Requested 603\. "
                    r"Please try again in 12\.\d+s\.$", error["message"]), error["message"]
    assert second.headers["retry-after"] == "13"
    assert second.headers["x-ratelimit-limit-tokens"] == "1000"
    assert second.headers["x-ratelimit-remaining-tokens"] in ("397", "398")


def test_max_concurrent_2_rejects_a_third_request_and_frees_slots_when_responses_end(deployment: Deployment) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            slow = [asyncio.create_task(chat(url, "conc", client, model="slow-chat")) for url in deployment.urls]
            await asyncio.to_thread(deployment.wait_for, lambda: deployment.in_flight("conc") == 2)
            third = await chat(deployment.urls[0], "conc", client)
            assert third.status_code == 429
            assert third.json()["error"]["type"] == "requests"
            assert third.json()["error"]["message"].startswith("Rate limit reached for concurrent requests: Limit 2, "
                                                              "Used 2, Requested 1.")
            assert third.headers["retry-after"] == "1"
            assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]
            assert deployment.in_flight("conc") == 0
            # A stream holds its slot until its last event (0.45 s after its first here), then frees it.
            async with client.stream("POST", f"{deployment.urls[1]}/chat/completions",
                                     headers={"authorization": f"Bearer {key_of('conc')}"},
                                     json={"model": "slow-chat", "stream": True,
                                           "messages": [{"role": "user", "content": "hi"}]}) as stream:
                assert stream.status_code == 200
                assert deployment.in_flight("conc") == 1
                body = (await stream.aread()).decode()
            assert body.endswith("data: [DONE]\n\n")
            await asyncio.to_thread(deployment.wait_for, lambda: deployment.in_flight("conc") == 0)

    asyncio.run(main())


def test_streams_whose_clients_disconnect_free_their_slots_at_once(deployment: Deployment) -> None:
    """The slot's release must survive the cancellation that a disconnect throws into the stream."""
    async def leave_after_first_chunk(url: str, client: httpx.AsyncClient) -> None:
        async with client.stream("POST", f"{url}/chat/completions",
                                 headers={"authorization": f"Bearer {key_of('leaver')}"},
                                 json={"model": "slow-chat", "stream": True,
                                       "messages": [{"role": "user", "content": "hi"}]}) as stream:
            assert stream.status_code == 200
            async for _ in stream.aiter_bytes():
                break  # and the connection is dropped mid-stream

    async def main() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(leave_after_first_chunk(url, client) for url in deployment.urls))
        await asyncio.to_thread(deployment.wait_for, lambda: deployment.in_flight("leaver") == 0, 3)
        async with httpx.AsyncClient(timeout=30) as client:
            after = await chat(deployment.urls[0], "leaver", client)
        assert after.status_code == 200, after.text

    async def leave_during_the_first_byte_hold(url: str) -> None:
        # Gone before the 200 is sent: the stream's body is never iterated at all.
        port = httpx.URL(url).port
        body = json.dumps({"model": "slow-chat", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                     f"authorization: Bearer {key_of('leaver')}\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\n\r\n{body}".encode())
        await writer.drain()
        await asyncio.to_thread(deployment.wait_for, lambda: deployment.in_flight("leaver") >= 1)
        writer.close()

    async def then() -> None:
        await asyncio.gather(*(leave_during_the_first_byte_hold(url) for url in deployment.urls))
        await asyncio.to_thread(deployment.wait_for, lambda: deployment.in_flight("leaver") == 0, 3)

    asyncio.run(main())


def test_a_request_refused_before_it_was_queued_is_not_charged(deployment: Deployment) -> None:
    # No worker serves the model: three 503s in a row, not two 503s and a 429, and nothing spent.
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return [await chat(deployment.urls[i % 2], "refused", client, model="unserved-chat", max_tokens=1000)
                    for i in range(3)]

    for refused in asyncio.run(main()):
        assert refused.status_code == 503, refused.text
        assert "No worker is serving provider 'unserved'" in refused.json()["error"]["message"]
    assert deployment.full("refused")
    assert deployment.in_flight("refused") == 0


def test_success_headers_carry_limits_remaining_and_time_until_full(deployment: Deployment) -> None:
    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            first = await chat(deployment.urls[0], "headers", client, max_tokens=10)
            streamed = await chat(deployment.urls[1], "headers", client, max_tokens=10, stream=True)
            free = await chat(deployment.urls[0], "free", client)
            return first, streamed, free

    first, streamed, free = asyncio.run(main())
    assert first.status_code == 200
    # 3 prompt tokens ("hi": 2 chars // 4, + 3 for the message) + max_tokens 10 = 13 tokens;
    # at 10000 TPM a token refills in 6 ms, so the bucket is full again in 78 ms.
    assert {k: v for k, v in first.headers.items() if k.startswith("x-ratelimit-")} == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "10000", "x-ratelimit-remaining-tokens": "9987", "x-ratelimit-reset-tokens": "78ms",
    }
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.headers["x-ratelimit-remaining-requests"] == "58"
    assert 9974 <= int(streamed.headers["x-ratelimit-remaining-tokens"]) <= 9987
    assert GO_DURATION.match(streamed.headers["x-ratelimit-reset-requests"])
    assert GO_DURATION.match(streamed.headers["x-ratelimit-reset-tokens"])
    assert not [k for k in free.headers if k.startswith("x-ratelimit-")]


def test_the_openai_sdk_raises_rate_limit_error_with_retry_after(deployment: Deployment) -> None:
    client = openai.OpenAI(base_url=deployment.urls[0], api_key=key_of("sdk"), max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    raw = client.chat.completions.with_raw_response.create(model="mock-chat", messages=messages)
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert raw.parse().choices[0].message.content
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="mock-chat", messages=messages)
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.type == "requests"
    assert info.value.response.headers["retry-after"] in ("59", "60")
    assert info.value.response.headers["x-ratelimit-reset-requests"].endswith("s")


def test_the_worker_settles_the_token_bucket_with_real_usage(deployment: Deployment) -> None:
    async def main() -> tuple[int, int, int]:
        async with httpx.AsyncClient(timeout=30) as client:
            # Estimated at ~4,000 tokens (the output limit), used ~20 (the mock says 4 + the prompt).
            first = await chat(deployment.urls[0], "settle", client, max_tokens=4000)
            second = await chat(deployment.urls[1], "settle", client, max_tokens=4000)
            return (int(first.headers["x-ratelimit-remaining-tokens"]),
                    int(second.headers["x-ratelimit-remaining-tokens"]), first.json()["usage"]["total_tokens"])

    after_first, after_second, used = asyncio.run(main())
    estimate = after_first and 100000 - after_first
    # Unsettled, the second request would see both estimates gone (~92,000 left); settled, only the
    # first request's real usage and the second's estimate (~96,000, plus some refill).
    assert used < 50
    assert after_second >= 100000 - used - estimate - 50
    assert after_second > after_first - estimate + 3000


def test_a_key_with_its_own_limit_is_held_to_it_inside_its_tenants(deployment: Deployment) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    ci = openai.OpenAI(base_url=deployment.urls[0], api_key=CI_KEY, max_retries=0)
    for remaining in ("1", "0"):
        raw = ci.chat.completions.with_raw_response.create(model="mock-chat", messages=messages)
        # The tighter of the two limits is the one shown: the key's 2 RPM, not the tenant's 60.
        assert (raw.headers["x-ratelimit-limit-requests"], raw.headers["x-ratelimit-remaining-requests"]) \
            == ("2", remaining)
    with pytest.raises(openai.RateLimitError) as info:
        ci.chat.completions.create(model="mock-chat", messages=messages)
    assert "Rate limit reached for requests per min (RPM) of key 'ci': Limit 2, Used 2" in info.value.message
    # The tenant's other key is not held to ci's limit; the tenant bucket counted ci's two requests
    # (and not the refused third), so 60 - 3 are left (58 if a second's refill came in between).
    other = openai.OpenAI(base_url=deployment.urls[1], api_key=key_of("keyed"), max_retries=0)
    raw = other.chat.completions.with_raw_response.create(model="mock-chat", messages=messages)
    assert raw.headers["x-ratelimit-limit-requests"] == "60"
    assert raw.headers["x-ratelimit-remaining-requests"] in ("57", "58")
