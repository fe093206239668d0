"""The console's figures (api/routes/console.py, broker/ops/rollups.py): what they count, how long they
stay, and that nobody without the admin key sees any of them. The page itself: test_console_page.py."""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis
import redis.asyncio as aioredis

from broker.config import hash_key
from broker.keys import Keys
from broker.ops import rollups, series
from tests.fakes.openai_upstream import UpstreamServer
from tests.harness import REDIS_URL, TEST_KEY
from tests.stacks import StackFactory

ADMIN_KEY = "sk-admin-console-02"
SECRET_TENANT = "acme-confidential"
SECRET_MODEL = "m-priced"
ROUTES = ("/console", "/console/assets/console.js", "/console/assets/uPlot.iife.min.js", "/console/meta",
          "/console/series?window=24h", "/console/spend", "/console/log?failed=1", "/admin/keys")

pytestmark = pytest.mark.upstream(chunks=3)


@pytest.fixture
def sync_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def _stack(stack_factory: StackFactory, upstream: UpstreamServer, **sections: Any) -> str:
    stack = stack_factory(
        {"mock": {"kind": "mock", "tokens": 3, "first_token_delay_s": 0.01},
         "up": {"kind": "openai", "base_url": upstream.base_url}},
        {SECRET_MODEL: [{"provider": "mock", "model": "m", "input_per_mtok": 1000, "output_per_mtok": 2000}],
         "broken": [{"provider": "up", "model": "fail-500@console"}],
         "refused": [{"provider": "up", "model": "fail-400@console"}]},
        tenants={SECRET_TENANT: {"keys": [hash_key(TEST_KEY)], "rpm": 12}}, **sections)
    return stack.up("mock", "up")


def _traffic(base_url: str) -> int:
    """Answers (some streamed), upstream 5xx and 4xx, a cache hit, and refusals by the rate limit;
    returns how many requests the rate limit refused."""
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    for i in range(4):
        client.chat.completions.create(model=SECRET_MODEL, messages=[{"role": "user", "content": f"q {i}"}],
                                       stream=i % 2 == 1, temperature=0)
    client.chat.completions.create(model=SECRET_MODEL, messages=[{"role": "user", "content": "q 0"}], temperature=0)
    for model, error in (("broken", openai.InternalServerError), ("refused", openai.BadRequestError)):
        with pytest.raises(error):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    refused = 0
    for i in range(8):
        try:
            client.chat.completions.create(model=SECRET_MODEL, messages=[{"role": "user", "content": f"z {i}"}])
        except openai.RateLimitError:
            refused += 1
    assert refused > 0
    return refused


def _wait(condition: Any, timeout_s: float = 10) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


async def _fold_now(namespace: str) -> bool:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        return await rollups.fold(client, Keys(namespace), SECRET_TENANT, int(time.time()) // 3600 * 3600)
    finally:
        await client.aclose()


def _series_keys(client: redis.Redis, namespace: str) -> list[bytes]:
    """Every rollup hash of the namespace: the tenants' and the queues' (broker/keys.py)."""
    return [*client.scan_iter(match=f"{namespace}:ts:*", count=1000),
            *client.scan_iter(match=f"{namespace}:{{*}}:ts:q:*", count=1000)]


def _hashes(client: redis.Redis, pattern: str) -> dict[str, dict[str, int]]:
    return {k.decode(): {f.decode(): int(v) for f, v in client.hgetall(k).items()}
            for k in client.scan_iter(match=pattern, count=1000)}


def test_rollups_count_what_the_ledger_counts_and_expire_as_documented(
        stack_factory: StackFactory, upstream: UpstreamServer, namespace: str, sync_redis: redis.Redis) -> None:
    # An hour no worker folded into the hourly series (none ran then): the workers fold it when they start.
    keys = Keys(namespace)
    earlier = (int(time.time()) // 3600 - 2) * 3600
    earlier_minutes = keys.rollup_minutes(SECRET_TENANT, rollups.hour_name(earlier))
    sync_redis.hset(earlier_minutes, mapping={f"{m}\tn\t{SECRET_MODEL}\tmock/m": 2 for m in (0, 30, 59)})
    sync_redis.expireat(earlier_minutes, earlier + 3600 + rollups.MINUTES_KEPT_S)  # as its writers set it
    base_url = _stack(stack_factory, upstream, admin={"keys": [hash_key(ADMIN_KEY)], "queue_sample_s": 0.2},
                      cache={"ttl_s": 60})
    earlier_day = keys.rollup_hours(SECRET_TENANT, time.strftime("%Y-%m-%d", time.gmtime(earlier)))
    _wait(lambda: sync_redis.hget(earlier_day, f"{time.gmtime(earlier).tm_hour}\tn\t{SECRET_MODEL}\tmock/m") == b"6")
    refused = _traffic(base_url)
    root = base_url.removesuffix("/v1")
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    usage = httpx.get(f"{base_url}/usage", params={"group_by": "model,deployment", "start": today, "end": today},
                      headers={"authorization": f"Bearer {TEST_KEY}"}).json()
    ledger = {(r["model"], r["deployment"]): r for r in usage["data"]}
    assert sum(r["requests"] for r in ledger.values()) == 8 - refused + 7 and ledger[(SECRET_MODEL, "cache")]

    # The minute buckets and the hour buckets each hold what the ledger holds, per model and deployment.
    def summed(kind: str) -> dict[tuple[str, str], Counter[str]]:
        """Today's counts, but those made up above for the earlier hour."""
        found: dict[tuple[str, str], Counter[str]] = {}
        for key, fields in _hashes(sync_redis, f"{namespace}:ts:{{{SECRET_TENANT}}}:{kind}:{today}*").items():
            for field, n in fields.items():
                if field == "folded" or key.endswith(rollups.hour_name(earlier)) or (
                        kind == "h" and field.startswith(f"{time.gmtime(earlier).tm_hour}\t")):
                    continue
                _, metric, model, deployment = field.split("\t")
                found.setdefault((model, deployment), Counter())[metric] += n
        return found

    _wait(lambda: sum(c["e:rate_limit"] for c in summed("m").values()) == refused)  # sent once a second
    def month_requests() -> int:
        answer = httpx.get(f"{root}/console/series", params={"window": "30d", "tenant": SECRET_TENANT},
                           headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
        return int(answer["totals"]["requests"])

    # The 30 days' chart has the hour not folded yet (from its minutes), and the one folded (from its day).
    assert month_requests() == sum(r["requests"] for r in ledger.values()) + 6
    # The hour is not over, so no worker folded it yet: fold it here, as they will, to see what it holds.
    assert asyncio.run(_fold_now(namespace))
    assert month_requests() == sum(r["requests"] for r in ledger.values()) + 6
    for kind in ("m", "h"):
        counted = summed(kind)
        for where, row in ledger.items():
            c = counted[where]
            assert (c["n"], c["ti"], c["to"], c["x"]) == (row["requests"], row["input_tokens"], row["output_tokens"],
                                                            row["cancelled"]), (kind, where)
            assert sum(c[f"e:{cause}"] for cause in rollups.JOB_CAUSES) == row["errors"], (kind, where)
        assert counted[("broken", "up/fail-500@console")]["e:upstream_5xx"] == 1
        assert counted[("refused", "up/fail-400@console")]["e:upstream_4xx"] == 1
        answered = counted[(SECRET_MODEL, "mock/m")]
        # A latency for each answer a model gave (not the cache's, not the failures'), a first token per stream.
        assert sum(n for m, n in answered.items() if m[0] == "l") == answered["n"] == 12 - refused
        assert sum(n for m, n in answered.items() if m[0] == "t" and m[1:].isdigit()) == 2
        assert counted[(SECRET_MODEL, rollups.NO_DEPLOYMENT)]["e:rate_limit"] == refused  # no deployment to blame

    # The console reads the same: its totals for the last hour are the ledger's.
    data = httpx.get(f"{root}/console/series", params={"window": "1h"},
                     headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert data["totals"]["requests"] == sum(r["requests"] for r in ledger.values())
    assert data["totals"]["rate_limit"] == refused and data["totals"]["upstream_5xx"] == 1
    assert sum(v for v in data["requests_per_s"]) * 60 == pytest.approx(data["totals"]["requests"] + refused)

    # Expiry: a minute's hash 24 h after its hour ends, an hour's 30 days after its day ends; queues likewise.
    _wait(lambda: bool(_hashes(sync_redis, f"{namespace}:{{mock}}:ts:q:*")))
    found = _series_keys(sync_redis, namespace)
    assert {k.decode().split(":")[-2] for k in found if b":ts:q:" not in k} == {"m", "h"}
    for key in found:
        name, _, when = key.decode().rpartition(":")
        if name.endswith(":m"):
            expected = calendar.timegm(time.strptime(when, "%Y-%m-%dT%H")) + 3600 + 86_400
        else:
            expected = calendar.timegm(time.strptime(when, "%Y-%m-%d")) + 86_400 + 30 * 86_400
        assert sync_redis.expiretime(key) == expected, key


def test_every_console_route_needs_the_admin_key_and_tells_nothing_without_it(
        stack_factory: StackFactory, upstream: UpstreamServer) -> None:
    base_url = _stack(stack_factory, upstream, admin={"keys": [hash_key(ADMIN_KEY)]})
    _traffic(base_url)
    root = base_url.removesuffix("/v1")
    for route in ROUTES:
        for headers, status in (({}, 401), ({"authorization": "Bearer sk-not-a-key-at-all"}, 401),
                                ({"authorization": "Basic YWRtaW46d3Jvbmc="}, 401),  # admin:wrong
                                ({"authorization": f"Bearer {TEST_KEY}"}, 403)):
            answer = httpx.get(root + route, headers=headers)
            assert answer.status_code == status, (route, headers)
            assert set(answer.json()) == {"error"}, route
            for secret in (SECRET_TENANT, SECRET_MODEL, "mock/m", "0.008", "usd", "requests"):
                assert secret not in answer.text.lower(), (route, secret)
        granted = httpx.get(root + route, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        assert granted.status_code == 200, route
    assert httpx.post(f"{root}/admin/keys", json={"tenant": SECRET_TENANT}).status_code == 401
    assert httpx.get(f"{root}/console/assets/..%2Fstatus.py",
                     headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 404


def test_without_the_console_no_series_is_written(stack_factory: StackFactory, upstream: UpstreamServer,
                                                  namespace: str, sync_redis: redis.Redis) -> None:
    base_url = _stack(stack_factory, upstream)  # no admin section: no console
    _traffic(base_url)
    time.sleep(1.2)  # a refusal would have been sent by now
    assert not _series_keys(sync_redis, namespace)
    assert httpx.get(base_url.removesuffix("/v1") + "/console/meta",
                     headers={"authorization": f"Bearer {TEST_KEY}"}).status_code == 403


def test_percentiles_read_from_the_histogram_are_within_an_eighth_of_the_truth() -> None:
    import random

    rng = random.Random(7)
    latencies = [rng.lognormvariate(6, 1.2) for _ in range(20_000)]  # a median near 400 ms, a long tail
    histogram = Counter(rollups.bucket(ms) for ms in latencies)
    assert len(histogram) <= rollups.TOP_BUCKET + 1
    ordered = sorted(latencies)
    for q in (0.5, 0.9, 0.99):
        truth = ordered[int(q * len(ordered))]
        read = series.quantile(histogram, q)
        assert read is not None and abs(read - truth) / truth < 0.125, (q, read, truth)
    assert rollups.bucket(0.2) == 0 and rollups.bucket(10 ** 9) == rollups.TOP_BUCKET
    assert series.quantile(Counter(), 0.5) is None
