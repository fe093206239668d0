"""A request's concurrency slot is taken once and freed once, in every way a request can end: real API and
worker processes on a Redis of this module's own, whose keyspace notifications say each time a slot was
really removed (a ZREM that removes nothing notifies nothing) and whose MONITOR says who removed it.

On one Redis a job its client waits for has its slot freed by its worker's end (job_end.lua), before its
answer is published, so the API answers without a round trip of its own (api/limits.py); whatever ends
otherwise (refused, client gone, timed out, async) is freed by the API, and the job's end, if it comes
later, removes nothing more.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from broker.config import hash_key
from broker.keys import Keys
from broker.limits.ratelimit import EXPIRES_MEMBER
from tests.harness import RedisServer
from tests.stacks import StackFactory, stacks

SLOW = {"kind": "mock", "tokens": 4, "first_token_delay_s": 0.5, "token_delay_s": 0.15}
TENANTS = ("plain", "streamer", "refused", "leaver", "stream_leaver", "async", "stuck", "crash")


def key_of(tenant: str) -> str:
    return f"sk-{tenant}-0123456789"


class Slots:
    """What happened to the in-flight sets of a namespace: every real removal (keyspace `zrem` events) and
    every ZREM sent, by whom (`lua`: inside a script; `tcp`: a process's own command)."""

    def __init__(self, url: str, namespace: str) -> None:
        self.keys = Keys(namespace)
        self.redis = redis.Redis.from_url(url)
        self.redis.config_set("notify-keyspace-events", "Kzgx")
        self.removed: list[str] = []  # in-flight key of each real removal, in order
        self.zrems: list[tuple[str, str, str]] = []  # (client type, key, member) of each ZREM sent
        self.senders: dict[str, str] = {}  # ZREM's member, or a result key -> the connection that sent it
        self._stop = threading.Event()
        self._events = self.redis.pubsub(ignore_subscribe_messages=True)
        self._events.psubscribe(f"__keyspace@0__:{namespace}:rl:*")
        self._threads = [threading.Thread(target=self._listen, daemon=True),
                         threading.Thread(target=self._monitor, args=(url,), daemon=True)]
        for thread in self._threads:
            thread.start()
        time.sleep(0.2)  # both subscribed before the first request

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._events.get_message(timeout=0.1)
            if message and message["data"] in (b"zrem", b"zremrangebyscore", b"expired"):
                key = message["channel"].decode().split(":", 1)[1]
                self.removed.append(key if message["data"] == b"zrem" else f"{message['data'].decode()}:{key}")

    def _monitor(self, url: str) -> None:
        with redis.Redis.from_url(url).monitor() as monitor:
            for command in monitor.listen():
                if self._stop.is_set():
                    return
                words = [word.strip('"') for word in command["command"].split(" ")]
                sender = f"{command.get('client_address')}:{command.get('client_port')}"
                if words[0].upper() == "ZREM" and len(words) >= 3:
                    self.zrems.append((command["client_type"], words[1], words[2]))
                    self.senders[f"zrem:{words[2]}"] = sender
                elif words[0].upper() == "SET" and len(words) >= 2 and ":result:" in words[1]:
                    self.senders[words[1]] = sender

    def in_flight(self, tenant: str) -> int:
        """Slots held: the set's members but `~expires` (admit.lua)."""
        return len([m for m in self.redis.zrange(self.keys.in_flight(tenant), 0, -1) if m != EXPIRES_MEMBER.encode()])

    def removals(self, tenant: str) -> int:
        return sum(key == self.keys.in_flight(tenant) for key in self.removed)

    def sent(self, tenant: str) -> list[str]:
        """Who sent each ZREM of the tenant's in-flight set: `lua` (a worker's job_end.lua) or `tcp` (the API)."""
        return [kind for kind, key, _ in self.zrems if key == self.keys.in_flight(tenant)]

    def wait_removed(self, tenant: str, count: int) -> None:
        """`count` removals seen, and as many ZREMs: keyspace events and MONITOR arrive on two connections,
        each read by its own thread, so one may be seen before the other."""
        self.wait(lambda: self.removals(tenant) == count and len(self.sent(tenant)) >= count)

    def wait(self, condition: Callable[[], bool], timeout_s: float = 5) -> None:
        end = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < end, "condition not met in time"
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self.redis.ping()  # a command for MONITOR's loop to wake on
        for thread in self._threads:
            thread.join(2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    own = RedisServer(tmp_path_factory.mktemp("slots-redis"))
    own.start()
    yield own
    own.kill()


@pytest.fixture(scope="module")
def stack(server: RedisServer, tmp_path_factory: pytest.TempPathFactory,
          module_namespace: str) -> Iterator[tuple[str, Slots]]:
    with stacks(tmp_path_factory.mktemp("slots"), module_namespace) as make:
        up = make({"mock": {"kind": "mock", "tokens": 4}, "slow": SLOW, "unserved": {"kind": "mock"},
                   "stall": {"kind": "mock", "tokens": 2, "first_token_delay_s": 2.5}},
                  {"mock-chat": [{"provider": "mock", "model": "m"}], "slow-chat": [{"provider": "slow", "model": "s"}],
                   "unserved-chat": [{"provider": "unserved", "model": "u"}],
                   "stall-chat": [{"provider": "stall", "model": "t"}]},
                  redis_url=server.url,
                  tenants={name: {"keys": [hash_key(key_of(name))], "max_concurrent": 2} for name in TENANTS})
        base_url = up.up("mock", "slow", "stall")
        slots = Slots(server.url, module_namespace)
        yield base_url, slots
        slots.close()


def sdk(base_url: str, tenant: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key_of(tenant), max_retries=0)


HI = [{"role": "user", "content": "hi"}]


def test_a_plain_answer_finds_its_slot_freed_by_its_jobs_end_not_by_the_api(stack: tuple[str, Slots]) -> None:
    base_url, slots = stack
    client = sdk(base_url, "plain")
    for _ in range(3):
        client.chat.completions.create(model="mock-chat", messages=HI)  # type: ignore[arg-type]
        assert slots.in_flight("plain") == 0  # free when the answer arrives: the client's next request may take it
    slots.wait_removed("plain", 3)
    # Each slot freed once, every time in the worker's job_end.lua: the API sent no ZREM at all.
    assert slots.sent("plain") == ["lua"] * 3
    time.sleep(0.3)
    assert slots.removals("plain") == 3


def test_a_stream_holds_its_slot_until_its_job_ends_then_its_end_frees_it(stack: tuple[str, Slots]) -> None:
    base_url, slots = stack
    stream = sdk(base_url, "streamer").chat.completions.create(model="slow-chat", messages=HI,  # type: ignore[arg-type]
                                                               stream=True)
    chunks = iter(stream)
    next(chunks)
    assert slots.in_flight("streamer") == 1
    rest = list(chunks)
    assert rest and rest[-1].choices[0].finish_reason == "stop"
    slots.wait(lambda: slots.in_flight("streamer") == 0)
    time.sleep(0.3)
    assert (slots.removals("streamer"), slots.sent("streamer")) == (1, ["lua"])


def test_a_request_refused_at_the_queue_gives_its_slot_back_once(stack: tuple[str, Slots]) -> None:
    base_url, slots = stack
    with pytest.raises(openai.InternalServerError) as refused:
        sdk(base_url, "refused").chat.completions.create(model="unserved-chat", messages=HI)  # type: ignore[arg-type]
    assert refused.value.status_code == 503
    slots.wait_removed("refused", 1)
    assert slots.in_flight("refused") == 0
    assert slots.sent("refused") == ["tcp"]  # nothing ran, so nothing but the API's refund frees it


def test_a_client_that_leaves_frees_its_slot_at_once_and_the_jobs_end_frees_nothing_more(
        stack: tuple[str, Slots]) -> None:
    base_url, slots = stack

    async def leave(stream: bool, tenant: str) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            body = {"model": "slow-chat", "messages": HI, "stream": stream}
            request = asyncio.ensure_future(client.post("/chat/completions", json=body,
                                                        headers={"authorization": f"Bearer {key_of(tenant)}"}))
            await asyncio.to_thread(slots.wait, lambda: slots.in_flight(tenant) == 1)
            request.cancel()  # the connection is dropped with it
            with pytest.raises(asyncio.CancelledError):
                await request

    for stream, tenant in ((False, "leaver"), (True, "stream_leaver")):
        asyncio.run(leave(stream, tenant))
        slots.wait(lambda: slots.in_flight(tenant) == 0, 3)
        time.sleep(1.5)  # the slow job would have ended by now, had it not been cancelled: nothing more freed
        assert slots.removals(tenant) == 1, tenant
        # The API's, when its client left; the aborted job's end (job_end.lua) may come first or after.
        assert "tcp" in slots.sent(tenant), tenant


def test_an_async_jobs_slot_ends_with_its_202_and_its_end_frees_nothing(stack: tuple[str, Slots]) -> None:
    base_url, slots = stack
    with httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {key_of('async')}"}, timeout=30) as api:
        accepted = api.post("/chat/completions", json={"model": "slow-chat", "messages": HI},
                            headers={"prefer": "respond-async"})
        assert accepted.status_code == 202
        assert slots.in_flight("async") == 0  # as before: an async job holds no slot once accepted
        end = time.monotonic() + 10
        while api.get(f"/jobs/{accepted.json()['id']}").json()["status"] != "completed":
            assert time.monotonic() < end
            time.sleep(0.05)
    time.sleep(0.2)
    assert (slots.removals("async"), slots.sent("async")) == (1, ["tcp"])  # its job carried no slot to free


def test_a_request_that_times_out_is_freed_by_the_api_once(stack: tuple[str, Slots]) -> None:
    base_url, slots = stack
    with httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {key_of('stuck')}"}, timeout=30) as api:
        # Its first token comes after 2.5 s; the client allows 1 s in all (X-Request-Timeout's floor).
        timed_out = api.post("/chat/completions", headers={"x-request-timeout": "1"},
                             json={"model": "stall-chat", "messages": HI})
    assert timed_out.status_code in (408, 504), timed_out.text
    assert slots.in_flight("stuck") == 0
    time.sleep(2.0)  # past the upstream call's end: whatever the worker did with it, nothing more is freed
    assert (slots.removals("stuck"), slots.sent("stuck")[0]) == (1, "tcp")


def test_a_job_whose_worker_dies_keeps_its_slot_until_the_reclaimed_job_ends(tmp_path: Path, server: RedisServer,
                                                                            namespace: str) -> None:
    with stacks(tmp_path, namespace) as make:
        stack = make({"slow": {"kind": "mock", "tokens": 4, "first_token_delay_s": 1.5}},
                     {"slow-chat": [{"provider": "slow", "model": "s"}]}, redis_url=server.url,
                     queue={"heartbeat_interval_s": 0.3, "claim_idle_s": 1.0, "drain_timeout_s": 10},
                     tenants={"crash": {"keys": [hash_key(key_of("crash"))], "max_concurrent": 2}})
        base_url = stack.up("slow")
        slots = Slots(server.url, namespace)
        try:
            async def main() -> Any:
                client = openai.AsyncOpenAI(base_url=base_url, api_key=key_of("crash"), max_retries=0)
                request = asyncio.ensure_future(client.chat.completions.create(model="slow-chat", messages=HI))  # type: ignore[arg-type]
                await asyncio.sleep(0.7)  # running on the doomed worker now
                stack.workers[0].kill()
                assert slots.in_flight("crash") == 1
                await asyncio.to_thread(stack.worker, "slow")  # the survivor reclaims it
                assert slots.in_flight("crash") == 1  # held while the job runs again
                return await request

            answer = asyncio.run(main())
            assert answer.choices[0].message.content
            assert slots.in_flight("crash") == 0
            slots.wait_removed("crash", 1)
            time.sleep(0.3)
            assert (slots.removals("crash"), slots.sent("crash")) == (1, ["lua"])
        finally:
            slots.close()


def test_with_replicated_durability_the_worker_frees_the_slot_before_the_wait(tmp_path: Path, server: RedisServer,
                                                                              namespace: str) -> None:
    """No job_end.lua there (the reply must follow a WAIT): the ZREM rides in the end's pipeline, with the
    result, before the WAIT and the PUBLISH, from the worker's connection, not the API's."""
    replica = RedisServer(tmp_path, replica_of=server)
    replica.start()
    try:
        with stacks(tmp_path, namespace) as make:
            stack = make({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]},
                         redis_url=server.url, redis={"durability": "replicated", "replicas": 1, "wait_timeout_ms": 150},
                         tenants={"durable": {"keys": [hash_key(key_of("durable"))], "max_concurrent": 2}})
            base_url = stack.up("mock")
            slots = Slots(server.url, namespace)
            try:
                answer = sdk(base_url, "durable").chat.completions.with_raw_response.create(
                    model="m", messages=HI)  # type: ignore[arg-type]
                assert slots.in_flight("durable") == 0
                job_id = answer.headers["x-request-id"].removeprefix("req_")
                slots.wait_removed("durable", 1)
                time.sleep(0.3)
                assert (slots.removals("durable"), slots.sent("durable")) == (1, ["tcp"])
                # Sent by the connection that stored the job's result: the worker's.
                assert slots.senders[f"zrem:{job_id}"] == slots.senders[Keys(namespace).result(job_id)]
            finally:
                slots.close()
    finally:
        replica.kill()
