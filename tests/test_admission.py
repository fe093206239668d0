"""Backpressure at the door, and Redis memory that returns to its baseline after heavy use."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from bench.loadgen import run_load
from broker.config import hash_key
from broker.keys import Keys
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import REDIS_URL, TEST_KEY
from tests.stacks import StackFactory

if TYPE_CHECKING:
    from broker.config import Config
    from broker.queue.streams import QueueScripts

HEADERS = {"authorization": f"Bearer {TEST_KEY}"}
pytestmark = pytest.mark.upstream(chunks=3)


def test_a_lane_that_cannot_drain_before_the_deadline_rejects_at_the_door(stack_factory: StackFactory) -> None:
    # Two slots of 0.2 s each: the lane drains ~10 jobs/s.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 2, "first_token_delay_s": 0.2}},
                          {"m": [{"provider": "mock", "model": "m"}]}, queue={"min_queue": 5})
    base_url = stack.up(("mock", "--concurrency", "2"))

    async def send(http: aiohttp.ClientSession, i: int, timeout_s: float) -> tuple[int, dict[str, Any], Any]:
        body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}
        async with http.post(f"{base_url}/chat/completions", json=body,
                             headers={**HEADERS, "x-request-timeout": str(timeout_s)}) as resp:
            return resp.status, dict(resp.headers), await resp.json()

    async def main() -> tuple[list[Any], list[Any]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            # A backlog with a generous deadline: admitted, and the drain rate gets measured.
            patient = [asyncio.ensure_future(send(http, i, 60)) for i in range(40)]
            await asyncio.sleep(2.0)
            # ~20 jobs ahead at ~10/s is ~2 s of waiting: a 1 s deadline cannot be met.
            hurried = await asyncio.gather(*(send(http, 100 + i, 1.0) for i in range(20)))
            return list(await asyncio.gather(*patient)), list(hurried)

    patient, hurried = asyncio.run(main())
    assert {status for status, _, _ in patient} == {200}
    rejected = [(h, b) for status, h, b in hurried if status == 429]
    assert len(rejected) >= 15, [s for s, _, _ in hurried]
    headers, body = rejected[0]
    assert body["error"]["code"] == "queue_full" and "drain" in body["error"]["message"]
    assert int(headers["Retry-After"]) >= 1
    assert not [s for s, _, _ in hurried if s == 504]  # rejected up front, not left to time out


def test_a_first_burst_is_admitted_by_the_assumed_rate_before_any_is_measured(stack_factory: StackFactory) -> None:
    # A fresh deployment: no drain rate measured yet. Two slots of 0.5 s, assumed as such: 4 jobs/s.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 2, "first_token_delay_s": 0.5, "concurrency": 2}},
                          {"m": [{"provider": "mock", "model": "m"}]},
                          queue={"min_queue": 2, "assumed_service_s": 0.5})
    base_url = stack.up("mock")

    async def main() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            async def send(i: int) -> tuple[int, Any]:
                body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}
                async with http.post(f"{base_url}/chat/completions", json=body,
                                     headers={**HEADERS, "x-request-timeout": "5"}) as resp:
                    return resp.status, await resp.json()
            return list(await asyncio.gather(*(send(i) for i in range(40))))

    answers = asyncio.run(main())
    statuses = [status for status, _ in answers]
    # ~16 fit in 70% of 5 s at 4/s (the last starts at ~3.5 s). Admitting all 40 (as when the
    # assumed rate is far too high) answers ~18 and leaves ~22 to time out.
    assert 10 <= statuses.count(200) <= 24, statuses
    assert statuses.count(429) == 40 - statuses.count(200), statuses
    assert {body["error"]["code"] for status, body in answers if status == 429} == {"queue_full"}


def test_jobs_that_would_start_in_time_but_finish_too_late_are_refused_at_the_door(stack_factory: StackFactory) -> None:
    # One slot, 2 s a job, 8 requests at once with a 5 s deadline: two can finish in time (at ~2 s
    # and ~4 s). A third would start at ~4 s, within 70% of its deadline, and finish at ~6 s:
    # admitting by the start only turns it into a 504 five seconds later.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 2, "first_token_delay_s": 2.0, "concurrency": 1}},
                          {"m": [{"provider": "mock", "model": "m"}]},
                          queue={"min_queue": 0, "assumed_service_s": 2.0})
    base_url = stack.up("mock")

    async def send(http: aiohttp.ClientSession, prompt: str, timeout_s: float) -> tuple[int, Any]:
        async with http.post(f"{base_url}/chat/completions",
                             json={"model": "m", "messages": [{"role": "user", "content": prompt}]},
                             headers={**HEADERS, "x-request-timeout": str(timeout_s)}) as resp:
            return resp.status, await resp.json()

    async def main() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            assert (await send(http, "measures the service time", 60))[0] == 200
            return list(await asyncio.gather(*(send(http, f"q{i}", 5.0) for i in range(8))))

    answers = asyncio.run(main())
    statuses = sorted(status for status, _ in answers)
    assert 504 not in statuses and 1 <= statuses.count(200) <= 2, statuses
    assert statuses.count(429) == 8 - statuses.count(200), statuses
    messages = [body["error"]["message"] for status, body in answers if status == 429]
    assert all("take about 2.0s each" in m for m in messages), messages


def test_each_tenant_is_admitted_by_how_fast_its_own_queue_drains(stack_factory: StackFactory, namespace: str) -> None:
    # Two tenants share a lane that drains ~10 jobs/s; taking turns, each queue drains at ~5/s.
    keys = {"a": "sk-tenant-a-000001", "b": "sk-tenant-b-000001"}
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 2, "first_token_delay_s": 0.2}},
                          {"m": [{"provider": "mock", "model": "m"}]}, queue={"min_queue": 5},
                          tenants={name: {"keys": [hash_key(key)]} for name, key in keys.items()})
    base_url = stack.up(("mock", "--concurrency", "2"))

    async def send(http: aiohttp.ClientSession, tenant: str, i: int, timeout_s: float) -> tuple[int, Any]:
        body = {"model": "m", "messages": [{"role": "user", "content": f"{tenant}{i}"}]}
        async with http.post(f"{base_url}/chat/completions", json=body,
                             headers={"authorization": f"Bearer {keys[tenant]}",
                                      "x-request-timeout": str(timeout_s)}) as resp:
            return resp.status, await resp.json()

    async def main() -> tuple[list[Any], list[Any]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            patient = [asyncio.ensure_future(send(http, t, i, 60)) for i in range(30) for t in keys]
            await asyncio.sleep(2.5)
            drain = {k.decode(): float(v) for k, v in
                     redis.Redis.from_url(REDIS_URL).hgetall(Keys(namespace).drain("mock")).items()
                     if k.endswith(b"rate")}
            # A's ~18 waiting jobs drain at ~5/s: ~3.6 s, past 70% of a 3 s deadline.
            hurried = await send(http, "a", 100, 3.0)
            # The backlog has done its part (its answers are not what is judged): rather than wait ~4 s
            # for it to drain, its clients leave and the API cancels their jobs.
            for request in patient:
                request.cancel()
            await asyncio.gather(*patient, return_exceptions=True)
            return [drain], [hurried]

    (drain,), ((status, body),) = asyncio.run(main())
    assert 5 <= drain["rate"] <= 13, drain  # ~10/s, less on a loaded machine
    for tenant in keys:
        assert 0.3 * drain["rate"] <= drain[f"default:{tenant}:rate"] <= 0.7 * drain["rate"], drain
    assert status == 429 and body["error"]["code"] == "queue_full", body
    # The door used A's own measured rate, not the lane's.
    quoted = re.search(r"ahead of this one drain at about ([0-9.]+)/s", body["error"]["message"])
    assert quoted and float(quoted[1]) <= 0.7 * drain["rate"], body


def namespace_keys(namespace: str) -> set[bytes]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return set(client.scan_iter(match=f"{namespace}:*", count=1000))
    finally:
        client.close()


def test_keys_return_to_baseline_after_5000_jobs(stack_factory: StackFactory, namespace: str,
                                                 own_upstream: UpstreamServer) -> None:
    stack = stack_factory(
        {"mock": {"kind": "mock", "tokens": 4},
         "up": {"kind": "openai", "base_url": own_upstream.base_url, "concurrency": 64}},
        {"m": [{"provider": "mock", "model": "m"}], "broken": [{"provider": "up", "model": "fail-500"}],
         "slow": [{"provider": "up", "model": "slow"}]},
        server={"result_ttl_s": 1, "stream_resume_ttl_s": 1},  # results and streams' event logs: 1 s
        circuit={"failures": 1000, "min_calls": 1000},  # failed jobs must run and fail, not meet an open circuit
    )
    base_url = stack.up("mock", "up")
    client = httpx.Client(base_url=base_url, headers=HEADERS, timeout=30)
    for model, status in (("m", 200), ("broken", 502)):
        warm = client.post("/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "w"}]})
        assert warm.status_code == status
    time.sleep(1.5)  # the warm-ups' results expire; what is left is per-provider state, bounded by design
    baseline = namespace_keys(namespace)

    async def load() -> None:
        finished = await run_load(base_url, TEST_KEY, "m", concurrency=64, total=4000, stream=False)
        streamed = await run_load(base_url, TEST_KEY, "m", concurrency=64, total=1000, stream=True)
        assert (finished.requests, finished.errors, streamed.requests, streamed.errors) == (4000, 0, 1000, 0)

    asyncio.run(load())

    # Sent at once rather than one after another (each failure takes its retry, each cancellation its
    # 0.2 s): the same jobs, in a second rather than six.
    async def failed_and_cancelled() -> None:
        async with httpx.AsyncClient(base_url=base_url, headers=HEADERS, timeout=30) as http:
            async def failed() -> None:
                resp = await http.post("/chat/completions", json={
                    "model": "broken", "messages": [{"role": "user", "content": "x"}]})
                assert resp.status_code == 502

            async def cancelled() -> None:  # the client gives up while the upstream stalls
                with pytest.raises(httpx.ReadTimeout):
                    await http.post("/chat/completions",
                                    json={"model": "slow", "messages": [{"role": "user", "content": "x"}]},
                                    headers={"x-request-timeout": "2"}, timeout=httpx.Timeout(10, read=0.2))

            await asyncio.gather(*(failed() for _ in range(30)))
            await asyncio.gather(*(cancelled() for _ in range(10)))

    asyncio.run(failed_and_cancelled())
    time.sleep(2.5)  # results (1 s) and cancellation markers (the 2 s deadline) expire
    # A provider's scheduler state (`{p}:sched`, broker/keys.py: a field per lane and the turn) is written
    # only once there is an order to keep (two tenants in a lane, several lanes, a queue with only running
    # jobs), which the one warm-up job per provider is not: per provider and bounded, whenever it appears.
    # So are the ledger's counters of a (key, model, deployment) and day (ledger.lua), made by the first
    # job the group ends that day (here the cancelled ones of `slow`), kept for usage.retention_days.
    def bounded(key: bytes) -> bool:
        return key.endswith(b":sched") or re.search(rb":usage:\{[^}]*\}:\d{4}-\d{2}-\d{2}:", key) is not None

    assert {k for k in namespace_keys(namespace) if not bounded(k)} == {k for k in baseline if not bounded(k)}


# -- enqueue.lua and admit_enqueue.lua called directly: one mock provider, a live worker, tenant t's jobs

def _one_mock_provider(namespace: str) -> Any:
    from broker.config import validate
    return validate({"namespace": namespace, "providers": {"mock": {"kind": "mock"}},
                     "models": {"m": [{"provider": "mock", "model": "m"}]}, "tenants": {}}, source="test")


async def _live_worker(client: Any, keys: Keys) -> None:
    seconds, _ = await client.time()
    await client.zadd(keys.workers("mock"), {"w": seconds * 1000 + 60_000})  # a heartbeat a minute ahead


@asynccontextmanager
async def _mock_queue(namespace: str, url: str) -> AsyncIterator[tuple[Config, Keys, AsyncRedis, QueueScripts]]:
    """The `mock` provider's queue on the Redis at `url`, a live worker seen on it; the client closed after."""
    from broker.queue.streams import QueueScripts

    config, keys, client = _one_mock_provider(namespace), Keys(namespace), AsyncRedis.from_url(url)
    try:
        await _live_worker(client, keys)
        yield config, keys, client, QueueScripts(client)
    finally:
        await client.aclose()


def _embedding_job(job_id: str) -> Any:
    from broker.queue.jobs import Job
    from broker.queue.payloads import EmbeddingPayload
    from broker.wire import EmbeddingRequest
    return Job(id=job_id, tenant="t", model="m", provider="mock", upstream_model="m", reply_to="",
               created=time.time(), deadline=time.time() + 600,
               payload=EmbeddingPayload(EmbeddingRequest(model="m", input="x")))


async def test_a_queue_that_would_take_ages_gets_a_429_not_a_500(namespace: str) -> None:
    # A drain rate measured near zero put the wait at ~1e17 ms: Lua's tostring wrote it as "1e+17", which
    # the reply's int() parse refused, and the request got a 500 instead of the queue's 429.
    from broker.errors import RateLimited
    from broker.queue.streams import enqueue

    async with _mock_queue(namespace, REDIS_URL) as (config, keys, client, scripts):
        await client.hset(keys.backlog("mock"), mapping={"default": 100})
        await client.hset(keys.drain("mock"), mapping={"default:t:rate": 1e-15})
        job = _embedding_job("j")
        with pytest.raises(RateLimited) as info:
            await enqueue(scripts, keys, config, job)
        assert info.value.code == "queue_full" and info.value.retry_after_s is not None
        assert info.value.retry_after_s > 10**9


async def test_a_job_queued_while_its_tenants_stream_is_gone_is_still_pulled(namespace: str) -> None:
    # enqueue.lua makes a tenant's stream and group only when the tenant joins the lane's active set (the
    # two live and go together). A stream gone while its tenant stays active (evicted) must not take the
    # job in a stream without the workers' group, where no worker would ever read it.
    from broker.queue.streams import enqueue, pull

    async with _mock_queue(namespace, REDIS_URL) as (config, keys, client, scripts):
        # The tenant joins the lane: its stream and group are made.
        await enqueue(scripts, keys, config, _embedding_job("j1"))
        await client.delete(keys.queue("mock", "default", "t"))  # evicted; the tenant is still active
        await enqueue(scripts, keys, config, _embedding_job("j2"))
        pulled = await pull(scripts, keys, config.queue, "mock", "w", 10)
        assert [p.job_id for p in pulled] == ["j2"]


async def _calls(client: AsyncRedis, command: str) -> int:
    """How many times Redis ran `command` so far (INFO commandstats, scripts' inner calls included)."""
    return int((await client.info("commandstats")).get(f"cmdstat_{command}", {}).get("calls", 0))

async def test_a_job_joining_its_tenants_stream_costs_no_zadd_and_a_lost_active_set_heals(
        namespace: str, own_redis: Any) -> None:
    # enqueue.lua marks a tenant active only when its XADD finds no stream (the two live and go together):
    # a tenant already queued pays no ZADD NX. Should the active set be lost while the stream lives (an
    # allkeys-* eviction), one job in eight puts the tenant back, and every job is then pulled.
    from broker.queue.streams import enqueue, pull

    # A Redis of its own: commands are counted below.
    async with _mock_queue(namespace, own_redis.url) as (config, keys, client, scripts):
        active = keys.active("mock", "default")
        await enqueue(scripts, keys, config, _embedding_job("j0"))
        assert await client.zscore(active, "t") == 0  # joined the lane, at the front
        zadds = await _calls(client, "zadd")
        for n in range(1, 41):
            await enqueue(scripts, keys, config, _embedding_job(f"j{n}"))
        # One ZADD NX per job before; now about one in eight (the heal below), never most of them.
        assert await _calls(client, "zadd") - zadds < 20
        await client.delete(active)  # lost; the stream lives on with its 41 jobs
        sent = 41
        while await client.zscore(active, "t") is None and sent < 400:
            await enqueue(scripts, keys, config, _embedding_job(f"j{sent}"))
            sent += 1
            await asyncio.sleep(0.0015)  # the next job lands on another of the server's milliseconds
        assert await client.zscore(active, "t") is not None, "the tenant never came back to its lane"
        pulled: list[str] = []
        while batch := await pull(scripts, keys, config.queue, "mock", "w", 50):
            pulled += [p.job_id for p in batch]
        assert pulled == [f"j{n}" for n in range(sent)]


async def test_a_pull_looks_only_at_lanes_with_work_and_still_finds_jobs_their_count_lost(
        namespace: str, own_redis: Any) -> None:
    # pull.lua reads every lane's backlog in one HMGET and looks (ZRANGE) only at the lanes it counts work
    # in; when it counts none anywhere, it looks at every lane, so a count gone wrong strands no job.
    from broker.queue.streams import enqueue, pull

    # A Redis of its own: commands are counted below.
    async with _mock_queue(namespace, own_redis.url) as (config, keys, client, scripts):
        await enqueue(scripts, keys, config, _embedding_job("j1"))
        before = await _calls(client, "zrange")
        assert [p.job_id for p in await pull(scripts, keys, config.queue, "mock", "w", 10)] == ["j1"]
        assert await _calls(client, "zrange") - before == 1  # the default lane only, of three
        # The backlog hash lost (or counting elsewhere): the job is still seen, every lane looked at.
        await enqueue(scripts, keys, config, _embedding_job("j2"))
        await enqueue(scripts, keys, config, _embedding_job("j3"))
        await client.delete(keys.backlog("mock"))
        # The count, gone below zero, ends each call after one job (as a miscount always did): one pull each.
        pulled = [p.job_id for _ in range(2) for p in await pull(scripts, keys, config.queue, "mock", "w", 10)]
        assert pulled == ["j2", "j3"]


async def test_a_pull_that_leaves_nothing_waiting_writes_no_drain_interval_unless_one_is_open(
        namespace: str, own_redis: Any) -> None:
    # pull.lua measures the drain rate over intervals in which work kept waiting. A pull that leaves none
    # closes the open interval (its `since` back to 0); with none open (the backlog hash's `~measuring`
    # unset), as at one request at a time, it writes nothing.
    from broker.queue.streams import enqueue, pull

    # A Redis of its own: commands are counted below.
    async with _mock_queue(namespace, own_redis.url) as (config, keys, client, scripts):
        drain, backlog = keys.drain("mock"), keys.backlog("mock")
        for n in range(3):  # one at a time: nothing is ever left waiting
            await enqueue(scripts, keys, config, _embedding_job(f"a{n}"))
            before = await _calls(client, "hset")
            assert [p.job_id for p in await pull(scripts, keys, config.queue, "mock", "w", 1)] == [f"a{n}"]
            assert await _calls(client, "hset") == before
        assert await client.hget(drain, "since") is None and await client.hget(backlog, "~measuring") is None
        # Three queued, one pulled: work left waiting opens an interval, flagged.
        for n in range(3):
            await enqueue(scripts, keys, config, _embedding_job(f"b{n}"))
        assert len(await pull(scripts, keys, config.queue, "mock", "w", 1)) == 1
        assert int(await client.hget(drain, "since") or 0) > 0 and await client.hget(backlog, "~measuring")
        # The rest pulled: the interval closed, the flag gone.
        assert len(await pull(scripts, keys, config.queue, "mock", "w", 5)) == 2
        assert await client.hget(drain, "since") == b"0" and await client.hget(backlog, "~measuring") is None
        assert await client.hget(drain, "default:t:since") == b"0"


async def test_a_pull_asks_about_cancellation_markers_only_while_one_may_live(
        namespace: str, own_redis: Any) -> None:
    # cancel.lua marks a job and says until when a marker may live (the backlog hash's `~cancels`);
    # pull.lua looks for markers only before that instant: no EXISTS per job on a provider with no
    # cancellation lately, and a job cancelled while queued is still dropped unrun.
    from broker.queue.streams import cancel, enqueue, pull

    # A Redis of its own: commands are counted below.
    async with _mock_queue(namespace, own_redis.url) as (config, keys, client, scripts):
        await enqueue(scripts, keys, config, _embedding_job("j1"))
        before = await _calls(client, "exists")
        assert [p.job_id for p in await pull(scripts, keys, config.queue, "mock", "w", 5)] == ["j1"]
        assert await _calls(client, "exists") == before  # no cancellation ever: nothing asked
        gone, kept = _embedding_job("j2"), _embedding_job("j3")
        await enqueue(scripts, keys, config, gone)
        await enqueue(scripts, keys, config, kept)
        await cancel(client, keys, ["mock"], gone.id, gone.deadline)
        seconds, _ = await client.time()
        assert int(await client.hget(keys.backlog("mock"), "~cancels") or 0) > seconds * 1000 + 500_000
        assert [p.job_id for p in await pull(scripts, keys, config.queue, "mock", "w", 5)] == ["j3"]
        # A shorter-lived cancel leaves the later instant as it was.
        await cancel(client, keys, ["mock"], "other", time.time() + 1)
        assert int(await client.hget(keys.backlog("mock"), "~cancels") or 0) > seconds * 1000 + 500_000


async def test_an_admission_riding_with_the_enqueue_queues_only_what_it_admits(namespace: str) -> None:
    # On one Redis the request's admission and its job's enqueue are one call (admit_enqueue.lua): a
    # request the rate limit refuses is refused before anything is queued or counted, as in two calls.
    from broker.config import Tenant
    from broker.errors import RateLimited
    from broker.limits.ratelimit import Deferred, Limiter, scopes_of
    from broker.queue.streams import QueueScripts, Refused, enqueue

    config = _one_mock_provider(namespace)
    keys, client = Keys(namespace), AsyncRedis.from_url(REDIS_URL)
    try:
        scripts, limiter = QueueScripts(client), Limiter(client, keys)
        assert scripts.one_redis
        await _live_worker(client, keys)
        tenant = Tenant(keys=[], rpm=1, max_concurrent=5)

        async def send(n: int) -> tuple[Deferred, bytes]:
            job = _embedding_job(f"j{n}")
            call = limiter.deferred(scopes_of(keys, "t", tenant, None), 1, job.id, job.deadline, tenant_name="t")
            assert isinstance(call, Deferred)
            return call, await enqueue(scripts, keys, config, job, call)

        first, entry = await send(1)
        assert first.admission is not None and first.admission.slots == [keys.in_flight("t")]
        assert await client.xlen(keys.queue("mock", "default", "t")) == 1 and entry
        with pytest.raises(Refused) as refused:  # the second request in the minute: over its 1 RPM
            await send(2)
        assert isinstance(refused.value.error, RateLimited) and refused.value.error.headers
        assert await client.xlen(keys.queue("mock", "default", "t")) == 1  # nothing more queued
        assert int(await client.hget(keys.backlog("mock"), "default") or 0) == 1  # nor counted
        assert await client.zrange(keys.in_flight("t"), 0, -1) == [b"j1", b"~expires"]  # nor a slot taken
    finally:
        await client.aclose()
