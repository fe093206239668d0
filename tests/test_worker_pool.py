"""Worker processes sharing one provider stream: each job runs exactly once; streams stay intact."""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import httpx
import openai
import redis

from broker.keys import Keys
from tests.fakes.openai_upstream import create_app
from tests.fakes.server import FakeServer
from tests.harness import REDIS_URL, TEST_KEY, sse_data
from tests.stacks import StackFactory
from workers.providers.mock import mock_words


def _jobs_done(output: str) -> int:
    match = re.search(r"worker stopped after (\d+) jobs", output)
    assert match, output
    return int(match.group(1))


def test_two_workers_never_share_a_job(stack_factory: StackFactory, namespace: str) -> None:
    # A little latency per job so both workers hold jobs at the same time.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 5, "first_token_delay_s": 0.02}},
                          {"m": [{"provider": "mock", "model": "m"}]})
    base_url = stack.up(("mock", "--concurrency", "16"), ("mock", "--concurrency", "16"))
    workers = stack.workers

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=60,
                                     headers={"authorization": f"Bearer {TEST_KEY}"}) as client:
            return await asyncio.gather(*(
                client.post("/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": f"job {i}"}]})
                for i in range(200)
            ))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 200
    bodies = [r.json() for r in responses]
    assert len({b["id"] for b in bodies}) == 200
    assert [b["choices"][0]["message"]["content"] for b in bodies] == [
        " ".join(mock_words(f"job {i}", 5)) for i in range(200)
    ]

    done = []
    for worker in workers:
        assert worker.stop() == 0  # SIGTERM: a clean exit after finishing in-flight jobs
        done.append(_jobs_done(worker.output()))
    assert sum(done) == 200, done  # nothing ran twice
    assert min(done) > 0, done  # and both workers took part

    client = redis.Redis.from_url(REDIS_URL)
    keys = Keys(namespace)
    # Finished entries are deleted, not just acked, and the emptied stream with them.
    assert list(client.scan_iter(match=keys.queue("mock", "*", "*"))) == []
    assert client.zcard(keys.active("mock", "default")) == 0
    assert int(client.hget(keys.backlog("mock"), "default") or 0) == 0


def test_200_concurrent_streams_arrive_complete_and_in_order(stack_factory: StackFactory) -> None:
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 20, "token_delay_s": 0.005}},
                          {"m": [{"provider": "mock", "model": "m"}]})
    base_url = stack.up(("mock", "--concurrency", "256"))

    # Read with aiohttp, not the SDK: parsing 200 streams' chunks into models made the client, not the
    # broker, the slow end (4.5 s of CPU in a 6 s test).
    async def one(http: aiohttp.ClientSession, i: int) -> tuple[list[str], str | None]:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": f"stream {i}"}]}
        async with http.post(f"{base_url}/chat/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
            text = await resp.text()
        assert text.endswith("data: [DONE]\n\n"), text[-200:]
        pieces: list[str] = []
        finish = None
        for data in sse_data(text)[:-1]:
            for choice in json.loads(data)["choices"]:
                if choice["delta"].get("content"):
                    pieces.append(choice["delta"]["content"])
                finish = choice.get("finish_reason") or finish
        return pieces, finish

    async def main() -> list[tuple[list[str], str | None]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(60),
                                         headers={"authorization": f"Bearer {TEST_KEY}"}) as http:
            return await asyncio.gather(*(one(http, i) for i in range(200)))

    results = asyncio.run(main())
    for i, (pieces, finish) in enumerate(results):
        words = mock_words(f"stream {i}", 20)
        # Every token, in order, exactly once: a chunk published before the API had
        # subscribed would show up here as a missing word.
        assert pieces == [words[0]] + [" " + w for w in words[1:]], i
        assert finish == "stop"


def test_several_api_processes_and_workers_share_one_redis(stack_factory: StackFactory) -> None:
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 6, "first_token_delay_s": 0.01}},
                          {"m": [{"provider": "mock", "model": "m"}]})
    stack.up(("mock", "--concurrency", "8"), ("mock", "--concurrency", "8"), apis=(1, 2))
    urls = list(stack.base_urls)  # two separate servers, the second with two processes

    async def main() -> list[tuple[int, str]]:
        clients = [openai.AsyncOpenAI(base_url=u, api_key=TEST_KEY, max_retries=0, timeout=60) for u in urls]

        async def one(i: int) -> tuple[int, str]:
            client = clients[i % 2]
            if i % 3 == 0:
                stream = await client.chat.completions.create(
                    model="m", stream=True, messages=[{"role": "user", "content": f"n{i}"}])
                return i, "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            done = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"n{i}"}])
            return i, done.choices[0].message.content or ""

        try:
            return await asyncio.gather(*(one(i) for i in range(120)))
        finally:
            for client in clients:
                await client.close()

    for i, text in asyncio.run(main()):
        assert text == " ".join(mock_words(f"n{i}", 6)), i


def test_concurrency_flag_above_the_config_enlarges_the_upstream_pool(stack_factory: StackFactory) -> None:
    # An upstream holding each request 1 s, a provider configured for 2 at a time, a worker told to run 6.
    with FakeServer(create_app()) as upstream:
        stack = stack_factory({"up": {"kind": "openai", "base_url": upstream.base_url, "concurrency": 2,
                                      "connect_timeout_s": 0.5}},
                              {"m": [{"provider": "up", "model": "hold"}]})
        base_url = stack.up(("up", "--concurrency", "6"))

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base_url, timeout=30,
                                         headers={"authorization": f"Bearer {TEST_KEY}"}) as client:
                return await asyncio.gather(*(client.post("/chat/completions", json={
                    "model": "m", "stream": i % 2 == 0, "messages": [{"role": "user", "content": f"job {i}"}]})
                    for i in range(6)))

        started = time.monotonic()
        responses = asyncio.run(main())
    # With a 2-connection pool, jobs 3 to 6 would wait for a connection past the 0.5 s connect timeout
    # and fail with "upstream up timed out" (a stream past its first-byte hold, inside its 200).
    assert [r.status_code for r in responses] == [200] * 6
    assert all("error" not in r.text for r in responses), [r.text for r in responses]
    assert time.monotonic() - started < 2.5  # all six upstream calls ran at once
