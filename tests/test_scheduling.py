"""Fair share between tenants and weighted priority lanes, under a real backlog.

One worker with 4 slots serves a mock that takes 20 ms a job, so a 1,000-job
flood is a real queue; completion order shows who the scheduler served. The
flood is sent with aiohttp: httpx's pool costs O(connections) per request and
would itself delay the late requests this test is about.

The late arrivals are enqueued while the worker is paused (SIGSTOP), so what
the test counts is the scheduler's choice, not how long ten HTTP requests took
to reach the API on a busy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import redis

from broker.config import hash_key
from broker.keys import Keys
from tests.conftest import REDIS_URL

KEY_A, KEY_B = "sk-tenant-a-000001", "sk-tenant-b-000001"
TENANTS = {"a": {"keys": [hash_key(KEY_A)]}, "b": {"keys": [hash_key(KEY_B)]}}
SLOW_MOCK = {"mock": {"kind": "mock", "tokens": 2, "first_token_delay_s": 0.02}}
MODELS = {"m": [{"provider": "mock", "model": "m"}]}


async def wait_for_backlog(namespace: str, lane: str, at_least: int) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        while int(await client.hget(Keys(namespace).backlog("mock"), lane) or 0) < at_least:
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def paused(worker: Any) -> AsyncIterator[None]:
    """Freeze the worker process; it resumes where it was (well inside its liveness TTL)."""
    worker.popen.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        worker.popen.send_signal(signal.SIGCONT)


async def wait_for_queued(namespace: str, lane: str, tenant: str, count: int) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        while await client.xlen(Keys(namespace).queue("mock", lane, tenant)) < count:
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()


class Sender:
    """Posts chat requests and records the order in which they finish."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url
        self.finished: list[str] = []

    async def send(self, key: str, tag: str, lane: str | None = None) -> int:
        headers = {"authorization": f"Bearer {key}", **({"x-priority": lane} if lane else {})}
        body = {"model": "m", "messages": [{"role": "user", "content": tag}]}
        async with self.session.post(f"{self.base_url}/chat/completions", json=body, headers=headers) as resp:
            await resp.read()
        self.finished.append(tag)
        return resp.status

    def count_since(self, mark: int, prefix: str) -> int:
        return sum(1 for tag in self.finished[mark:] if tag.startswith(prefix))


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(120))


def test_a_flooding_tenant_does_not_starve_another(stack_factory: Any, namespace: str) -> None:
    stack = stack_factory(SLOW_MOCK, MODELS, tenants=TENANTS)
    worker = stack.worker("mock", "--concurrency", "4")
    base_url = stack.api()

    async def main() -> list[int]:
        async with session() as http:
            sender = Sender(http, base_url)
            flood = [asyncio.ensure_future(sender.send(KEY_A, f"a{i}")) for i in range(1000)]
            await wait_for_backlog(namespace, "default", 900)
            async with paused(worker):
                mark = len(sender.finished)
                b_sent = [asyncio.ensure_future(sender.send(KEY_B, f"b{i}")) for i in range(10)]
                await wait_for_queued(namespace, "default", "b", 10)
            b = await asyncio.gather(*b_sent)
            # Round robin: B's ten alternate with A's after the 4 A jobs already running (~14;
            # FIFO would be 900+). The slack absorbs reply-delivery jitter on a loaded machine.
            a_passed = sender.count_since(mark, "a")
            assert a_passed <= 30, f"B waited behind {a_passed} of A's jobs"
            return list(b) + list(await asyncio.gather(*flood))

    assert set(asyncio.run(main())) == {200}


def test_interactive_jumps_the_batch_queue_and_batch_still_moves(stack_factory: Any, namespace: str) -> None:
    stack = stack_factory(SLOW_MOCK, MODELS, tenants=TENANTS)
    worker = stack.worker("mock", "--concurrency", "4")
    base_url = stack.api()

    async def main() -> None:
        async with session() as http:
            sender = Sender(http, base_url)
            batch = [asyncio.ensure_future(sender.send(KEY_A, f"batch{i}", "batch")) for i in range(300)]
            await wait_for_backlog(namespace, "batch", 250)
            async with paused(worker):
                mark = len(sender.finished)
                urgent = [asyncio.ensure_future(sender.send(KEY_A, f"int{i}", "interactive")) for i in range(10)]
                await wait_for_queued(namespace, "interactive", "a", 10)
            await asyncio.gather(*urgent)
            # Ten interactive answers came after only a few batch jobs (FIFO: after ~250):
            # the 4 already running plus batch's 1-in-9 share of the picks.
            assert sender.count_since(mark, "batch") <= 12
            mark = len(sender.finished)
            await asyncio.gather(*(sender.send(KEY_A, f"more{i}", "interactive") for i in range(200)))
            # ...yet batch kept its weighted share (1 in 13) while interactive had work.
            assert sender.count_since(mark, "batch") >= 8
            assert set(await asyncio.gather(*batch)) == {200}

    asyncio.run(main())
