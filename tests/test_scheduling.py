"""Fair share between tenants and weighted priority lanes, under a real backlog.

One worker with 4 slots serves a fake upstream whose streams take ~20 ms, so
a 1,000-job flood is a real queue. The fake records the order in which
requests reach it, which is the order the scheduler picked them: that order,
not the order answers reach the client (which also depends on how busy the
API process is), is what these tests judge.

The late arrivals are enqueued while the worker is paused (SIGSTOP), so the
picks after it resumes are the scheduler's choice among a known backlog. The
flood is sent with aiohttp: httpx's pool costs O(connections) per request.
Once the order has been judged, a second worker may join to drain what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis

from broker.config import hash_key
from broker.keys import Keys
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import REDIS_URL
from tests.stacks import StackFactory

KEY_A, KEY_B = "sk-tenant-a-000001", "sk-tenant-b-000001"
TENANTS = {"a": {"keys": [hash_key(KEY_A)]}, "b": {"keys": [hash_key(KEY_B)]}}
MODELS = {"m": [{"provider": "up", "model": "fake-model"}]}


pytestmark = pytest.mark.upstream(chunks=3, chunk_delay_s=0.01)


def start_stack(stack_factory: StackFactory, upstream: UpstreamServer) -> tuple[Any, str]:
    stack = stack_factory({"up": {"kind": "openai", "base_url": upstream.base_url}}, MODELS, tenants=TENANTS)
    return stack, stack.up(("up", "--concurrency", "4"))


async def wait_for(namespace: str, check: Any, timeout_s: float = 60) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    keys = Keys(namespace)
    end = asyncio.get_running_loop().time() + timeout_s
    try:
        while not await check(client, keys):
            assert asyncio.get_running_loop().time() < end, f"{check.__qualname__}: not met in {timeout_s} s"
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()


def backlog_at_least(lane: str, count: int) -> Any:
    async def check(client: Any, keys: Keys) -> bool:
        return int(await client.hget(keys.backlog("up"), lane) or 0) >= count
    return check


def queued(lane: str, tenant: str, count: int) -> Any:
    async def check(client: Any, keys: Keys) -> bool:
        return bool(await client.xlen(keys.queue("up", lane, tenant)) >= count)
    return check


@contextlib.asynccontextmanager
async def paused(worker: Any) -> AsyncIterator[None]:
    """Freeze the worker process; it resumes where it was (well inside its liveness TTL)."""
    worker.popen.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        worker.popen.send_signal(signal.SIGCONT)


def started(upstream: UpstreamServer, since: int) -> list[str]:
    """Tags of the requests that reached the upstream after the first `since`, in order."""
    return [r.body["messages"][0]["content"] for r in list(upstream.requests)[since:] if r.body]


def passed_before_last(order: list[str], prefix: str, last_prefix: str) -> int:
    """How many `prefix` jobs started before the last `last_prefix` job did."""
    last = max(i for i, tag in enumerate(order) if tag.startswith(last_prefix))
    return sum(1 for tag in order[:last] if tag.startswith(prefix))


class Sender:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def send(self, key: str, tag: str, lane: str | None = None) -> int:
        headers = {"authorization": f"Bearer {key}", **({"x-priority": lane} if lane else {})}
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": tag}]}
        async with self.session.post(f"{self.base_url}/chat/completions", json=body, headers=headers) as resp:
            text = await resp.read()
        return resp.status if text.endswith(b"data: [DONE]\n\n") and b'{"error"' not in text else 599


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(120))


def test_a_flooding_tenant_does_not_starve_another(stack_factory: StackFactory, namespace: str,
                                                   own_upstream: UpstreamServer) -> None:
    stack, base_url = start_stack(stack_factory, own_upstream)
    worker = stack.workers[0]

    async def main() -> list[int]:
        async with session() as http:
            sender = Sender(http, base_url)
            flood = [asyncio.ensure_future(sender.send(KEY_A, f"a{i}")) for i in range(1000)]
            await wait_for(namespace, backlog_at_least("default", 900))
            async with paused(worker):
                b_sent = [asyncio.ensure_future(sender.send(KEY_B, f"b{i}")) for i in range(10)]
                await wait_for(namespace, queued("default", "b", 10))
                mark = len(own_upstream.requests)
            b = await asyncio.gather(*b_sent)
            # Round robin: B's ten alternate with A's (~10 of A's; FIFO would be 900+).
            a_passed = passed_before_last(started(own_upstream, mark), "a", "b")
            assert a_passed <= 14, f"B waited behind {a_passed} of A's jobs"
            # The order is judged; the ~950 jobs left only have to be answered, which at 4 slots takes
            # ~9 s. A second worker with 32 slots drains them in ~3.
            await asyncio.to_thread(stack.worker, "up", "--concurrency", "32")
            return list(b) + list(await asyncio.gather(*flood))

    assert set(asyncio.run(main())) == {200}


def test_interactive_jumps_the_batch_queue_and_batch_still_moves(stack_factory: StackFactory, namespace: str,
                                                                 own_upstream: UpstreamServer) -> None:
    stack, base_url = start_stack(stack_factory, own_upstream)
    worker = stack.workers[0]

    async def main() -> None:
        async with session() as http:
            sender = Sender(http, base_url)
            batch = [asyncio.ensure_future(sender.send(KEY_A, f"batch{i}", "batch")) for i in range(300)]
            await wait_for(namespace, backlog_at_least("batch", 250))
            async with paused(worker):
                urgent = [asyncio.ensure_future(sender.send(KEY_A, f"int{i}", "interactive")) for i in range(10)]
                await wait_for(namespace, queued("interactive", "a", 10))
                mark = len(own_upstream.requests)
            assert set(await asyncio.gather(*urgent)) == {200}
            # Ten interactive jobs started before all but a couple of batch jobs (FIFO: after ~250):
            # batch gets 1 pick in 9 while only those two lanes wait. Batch jobs the worker had
            # pulled when it was paused (up to its 4 slots) may reach the upstream after the mark,
            # but all before the first interactive one: only the picks between first and last count.
            order = started(own_upstream, mark)
            first = min(i for i, tag in enumerate(order) if tag.startswith("int"))
            assert first <= 4 and passed_before_last(order[first:], "batch", "int") <= 2
            mark = len(own_upstream.requests)
            more = await asyncio.gather(*(sender.send(KEY_A, f"more{i}", "interactive") for i in range(200)))
            assert set(more) == {200}
            # ...yet batch kept its weighted share (~1 in 9, so ~25) while interactive had work.
            assert passed_before_last(started(own_upstream, mark), "batch", "more") >= 8
            assert set(await asyncio.gather(*batch)) == {200}

    asyncio.run(main())
