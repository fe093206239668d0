"""Redis behind Sentinel (broker/store/sentinel_url.py, broker/store/sentinel.py): the URL, one client
through Sentinel to a real primary, and a stack riding out a failover."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from arq import func
from arq.connections import ArqRedis
from arq.worker import Worker
from redis.asyncio import BlockingConnectionPool

from broker.cli.embedded_redis import free_port
from broker.config import ConfigError, resolve, validate
from broker.keys import Keys
from broker.store.connection import connect
from broker.store.sentinel_url import DEFAULT_PORT, SentinelURL, parse_sentinel_url
from tests.harness import TEST_KEY
from tests.stacks import Proc, StackFactory
from workers.providers.mock import mock_words

PASSWORD = "s3cr%40t-pw"  # percent-encoded '@': the parsed password is "s3cr@t-pw"


# ------------------------------------------------------------------ the URL

def test_a_full_url_names_sentinels_service_db_and_passwords() -> None:
    target = parse_sentinel_url(f"redis+sentinel://app:{PASSWORD}@10.0.0.1:26380,sentinel-b,[::1]:26381"
                                "/my%20master/3?sentinel_password=pw+2%26&socket_timeout=2.5")
    assert target.sentinels == (("10.0.0.1", 26380), ("sentinel-b", DEFAULT_PORT), ("::1", 26381))
    assert (target.service, target.db, target.username) == ("my master", 3, "app")
    assert target.password is not None and target.password.reveal() == "s3cr@t-pw"
    assert target.sentinel_password is not None and target.sentinel_password.reveal() == "pw+2&"  # '+' kept
    assert target.socket_timeout_s == 2.5
    assert "s3cr" not in repr(target) and "pw+2" not in repr(target)


def test_a_minimal_url_has_no_credentials_and_db_0() -> None:
    assert parse_sentinel_url("redis+sentinel://127.0.0.1:26379/mymaster") == SentinelURL(
        sentinels=(("127.0.0.1", 26379),), service="mymaster")
    assert parse_sentinel_url("redis+sentinel://:pw@h:1/m/").password == "pw"  # a trailing '/' is db 0
    assert parse_sentinel_url("redis+sentinel://:pw@h:1/m/").username is None


def test_the_password_goes_to_the_data_nodes_and_the_timeout_to_the_sentinels() -> None:
    client = connect("redis+sentinel://app:pw@h:1/m/3?sentinel_password=spw&socket_timeout=2.5",
                     max_connections=4, timeout=5)
    pool = client.connection_pool
    assert isinstance(pool, BlockingConnectionPool) and (pool.max_connections, pool.timeout) == (4, 5)
    data = pool.connection_kwargs
    assert (data["db"], data["username"], data["password"], data["protocol"]) == (3, "app", "pw", 2)
    assert "socket_timeout" not in data  # pub/sub and blocking reads wait longer than any such timeout
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert (sentinel["password"], sentinel["socket_timeout"], sentinel["protocol"]) == ("spw", 2.5, 2)
    pool = connect("redis+sentinel://:pw@h:1/m").connection_pool
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"] is None


@pytest.mark.parametrize("url, problem", [
    ("redis://h:26379/mymaster", "starts with redis+sentinel://"),
    (f"redis+sentinel://:{PASSWORD}@/mymaster", "sentinel address 1 of 1: no host"),
    (f"redis+sentinel://:{PASSWORD}@h:1,,h:2/mymaster", "sentinel address 2 of 3: no host"),
    (f"redis+sentinel://:{PASSWORD}@h:port/mymaster", "the port must be a number"),
    (f"redis+sentinel://:{PASSWORD}@h:70000/mymaster", "the port must be a number from 1 to 65535"),
    (f"redis+sentinel://:{PASSWORD}@h:\u00b2/mymaster", "the port must be a number"),  # isdigit() says yes
    (f"redis+sentinel://:{PASSWORD}@[::1/mymaster", "IPv6 address is written [addr]:port"),
    (f"redis+sentinel://:{PASSWORD}@h:1", "no service name"),
    (f"redis+sentinel://:{PASSWORD}@h:1/", "no service name"),
    (f"redis+sentinel://:{PASSWORD}@h:1/mymaster/zero", "only a database number"),
    (f"redis+sentinel://:{PASSWORD}@h:1/mymaster/0/x", "only a database number"),
    (f"redis+sentinel://:{PASSWORD}@h:1/mymaster?db=1", "unknown option 'db'"),
    (f"redis+sentinel://:{PASSWORD}@h:1/mymaster?socket_timeout=0", "socket_timeout is a number of seconds"),
    (f"redis+sentinel://:{PASSWORD}@h:1/mymaster?socket_timeout=soon", "socket_timeout is a number of seconds"),
    (f"redis+sentinel://h:1/m?sentinel_password={PASSWORD}&sentinel_password=x", "given twice"),
    (f"redis+sentinel://:{PASSWORD}@h:1/mymaster#top", "no #fragment"),
    # The '@' forgotten: the password lands where a host belongs, and must still not be repeated.
    (f"redis+sentinel://{PASSWORD}:99999/mymaster", "sentinel address 1 of 1: the port must be"),
])
def test_a_malformed_url_is_refused_saying_why_and_never_repeating_the_password(url: str, problem: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_sentinel_url(url)
    assert problem in str(refused.value)
    for secret in (PASSWORD, "s3cr"):
        assert secret not in str(refused.value)


def test_the_config_and_redis_url_env_refuse_a_malformed_sentinel_url_at_load() -> None:
    with pytest.raises(ConfigError, match=r"no service name: .* - at `\$.redis_url`") as refused:
        validate({"redis_url": f"redis+sentinel://:{PASSWORD}@h:26379"}, source="broker.yaml")
    assert "s3cr" not in str(refused.value)
    url = "redis+sentinel://h1:26379,h2:26379/mymaster/2"
    assert validate({"redis_url": url}, source="broker.yaml").redis_url == url  # as written
    with pytest.raises(ConfigError, match=r"^\$REDIS_URL: sentinel address 1 of 1: the port must be") as refused:
        resolve(None, {"REDIS_URL": f"redis+sentinel://:{PASSWORD}@h:x/mymaster"})
    assert "s3cr" not in str(refused.value)
    assert resolve(None, {"REDIS_URL": url}).redis_url == url


# ------------------------------------------------------------------ a primary, a replica, a sentinel

class Node:
    """A redis-server (or sentinel) of this test's own, on a free port, in its own directory."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.port = free_port()
        directory.mkdir(parents=True)
        self.proc = subprocess.Popen(["redis-server", *args, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(directory)], stdout=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)
        wait_until(self.answers, "redis-server did not start")

    def answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        self.client.close()
        self.proc.kill()
        self.proc.wait()


def wait_until(condition: Any, message: str, timeout_s: float = 10) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, message
        time.sleep(0.05)


class SentinelSetup:
    def __init__(self, directory: Path) -> None:
        # No 5 s wait for more replicas before a full sync (Redis 7's default): the test would wait on it.
        data = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        self.primary = Node(directory / "primary", *data)
        self.replica = Node(directory / "replica", *data, "--replicaof", "127.0.0.1", str(self.primary.port))
        conf = directory / "sentinel.conf"  # Sentinel rewrites its config file: one of the test's own
        conf.write_text(f"sentinel monitor mymaster 127.0.0.1 {self.primary.port} 1\n"
                        "sentinel down-after-milliseconds mymaster 1000\n"
                        "sentinel failover-timeout mymaster 3000\n")
        self.sentinel = Node(directory / "sentinel", str(conf), "--sentinel")
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel.port}/mymaster/0"
        wait_until(self.replica_in_sync, "the sentinel never saw the replica in sync")

    def replica_in_sync(self) -> bool:
        seen = self.sentinel.client.execute_command("SENTINEL", "REPLICAS", "mymaster")
        return bool(seen) and self.replica.client.info("replication")["master_link_status"] == "up"

    def primary_port(self) -> int:
        return int(self.sentinel.client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")[1])

    def stop(self) -> None:
        for node in (self.sentinel, self.replica, self.primary):
            node.stop()


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    if not shutil.which("redis-server"):
        pytest.skip("needs redis-server (for a primary, a replica and a sentinel)")
    setup = SentinelSetup(tmp_path / "redis")
    yield setup
    setup.stop()


async def double(ctx: dict[str, Any], n: int) -> int:
    return 2 * n


@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")  # arq's Worker.close
async def test_a_sentinel_client_pipelines_scripts_subscribes_blocks_and_runs_arq_jobs(
    sentinel_setup: SentinelSetup,
) -> None:
    primary = sentinel_setup.primary.client
    client = connect(sentinel_setup.url, max_connections=2, timeout=5)  # as api/state.py opens its pools
    async with client.pipeline(transaction=True) as pipe:
        assert await pipe.incr("n").incr("n").execute() == [1, 2]
    assert await client.register_script("return redis.call('incrby', KEYS[1], ARGV[1])")(keys=["n"], args=[5]) == 7
    pubsub = client.pubsub()
    await pubsub.subscribe("channel")  # holds one of the two connections from now on
    assert (await pubsub.get_message(timeout=5) or {}).get("type") == "subscribe"
    primary.publish("channel", "hello")
    assert (await pubsub.get_message(timeout=5) or {}).get("data") == b"hello"

    read = asyncio.create_task(client.xread({"s": "$"}, block=5000))  # holds the other one
    await asyncio.sleep(0.2)
    waiting = asyncio.create_task(client.get("n"))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # the pool is full: a caller waits for a connection rather than failing
    primary.xadd("s", {"k": "v"})
    assert [entries for _, entries in await read][0][0][1] == {b"k": b"v"}
    assert await waiting == b"7"

    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await client.aclose()

    client = connect(sentinel_setup.url)  # as broker/batches/worker.py runs arq over its pool
    job = await ArqRedis(client.connection_pool).enqueue_job("double", 21, _queue_name="q")
    assert job is not None
    worker = Worker(functions=[func(double, name="double")], redis_pool=ArqRedis(client.connection_pool), queue_name="q",
                    burst=True, poll_delay=0, handle_signals=False)
    await worker.main()
    assert await job.result(timeout=5) == 42
    await worker.close()
    await client.aclose()
    # Its sentinel clients closed too: the sentinel sees this test's own client only.
    wait_until(lambda: len(sentinel_setup.sentinel.client.client_list()) == 1, "a sentinel connection leaked", 2)


def is_openai_error(resp: httpx.Response) -> bool:
    error = resp.json().get("error")
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= error.keys()


def test_a_stack_on_a_sentinel_url_answers_before_and_after_a_failover(
    sentinel_setup: SentinelSetup, stack_factory: StackFactory, namespace: str
) -> None:
    setup = sentinel_setup
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 4}}, {"m": [{"provider": "mock", "model": "m"}]},
                          redis_url=setup.url, queue={"heartbeat_interval_s": 0.3, "claim_idle_s": 1.0})
    keys = Keys(namespace)
    # Not Stack.worker: it reads the config's redis_url with plain redis-py, which knows no Sentinel.
    stack.procs.append(Proc(["worker", "--config", str(stack.config_path), "--provider", "mock"],
                            stack.log_dir / "worker-mock.log"))
    wait_until(lambda: setup.primary.client.zcard(keys.workers("mock")), "the worker never registered")
    client = openai.OpenAI(base_url=stack.api(), api_key=TEST_KEY, max_retries=0, timeout=10)

    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "before"}])
    assert answer.choices[0].message.content == " ".join(mock_words("before", 4))
    chunks = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "streamed"}],
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " ".join(
        mock_words("streamed", 4))

    setup.sentinel.client.execute_command("SENTINEL", "FAILOVER", "mymaster")
    wait_until(lambda: setup.primary_port() == setup.replica.port, "the sentinel never switched", 10)
    recorded = setup.replica.client.xlen(keys.usage_log())

    # Answers until one is recorded on the new primary (the old one takes writes until Sentinel
    # reconfigures it, some 10 s on, so answers served there prove nothing); each a 200 or a clean 503.
    statuses: list[int] = []
    end = time.monotonic() + 10
    while not statuses or statuses[-1] != 200 or setup.replica.client.xlen(keys.usage_log()) <= recorded:
        assert time.monotonic() < end, f"no answer through the new primary; statuses {statuses}"
        resp = httpx.post(f"{client.base_url}chat/completions", headers={"authorization": f"Bearer {TEST_KEY}"},
                          json={"model": "m", "messages": [{"role": "user", "content": "during"}]}, timeout=10)
        statuses.append(resp.status_code)
        assert resp.status_code == 200 or (resp.status_code == 503 and is_openai_error(resp)), resp.text

    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "after"}])
    assert answer.choices[0].message.content == " ".join(mock_words("after", 4))
    chunks = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "after"}],
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " ".join(
        mock_words("after", 4))
    assert setup.replica.client.xlen(keys.usage_log()) >= recorded + 3


def test_replicated_durability_waits_for_the_replica_behind_a_sentinel_url(
    sentinel_setup: SentinelSetup, stack_factory: StackFactory, namespace: str
) -> None:
    """`redis.durability: replicated` (broker/queue/durability.py) on its main ground: its WAITs go to the
    primary the sentinel names, in the pipelines of the writes (tests/test_durability.py for the rest)."""
    setup = sentinel_setup
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 4}}, {"m": [{"provider": "mock", "model": "m"}]},
                          redis_url=setup.url, redis={"durability": "replicated", "wait_timeout_ms": 500})
    keys = Keys(namespace)
    stack.procs.append(Proc(["worker", "--config", str(stack.config_path), "--provider", "mock"],
                            stack.log_dir / "worker-mock.log"))
    wait_until(lambda: setup.primary.client.zcard(keys.workers("mock")), "the worker never registered")
    client = openai.OpenAI(base_url=stack.api(), api_key=TEST_KEY, max_retries=0, timeout=10)

    def waits() -> int:
        return int(setup.primary.client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))

    before = waits()
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "kept"}])
    assert answer.choices[0].message.content == " ".join(mock_words("kept", 4))
    assert waits() >= before + 2  # the enqueue's and the end's
