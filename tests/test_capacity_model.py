"""bench/capacity_model.py's arithmetic against cases worked by hand (the figures below are chosen to
make the hand computation exact, not measured ones)."""

from __future__ import annotations

import math

import msgspec
import pytest

from bench.capacity_model import (Inputs, Load, RoleCost, commands_per_request, hot_share, on_box, plan,
                                  publishes_per_request, request_cost, shard_commands, stream_cost)


def inputs(**over: object) -> Inputs:
    fields: dict[str, object] = dict(
        measured_at="2026-12-07T00:00:00+00:00", machine="test", commit="x", quiet=True, concurrency=64,
        non_stream=RoleCost(api_ms=1.0, worker_ms=0.5, redis_ms=0.25),
        # 10 chunks -> 110 chunks: API +0.01 ms, worker +0.02 ms, Redis +0.005 ms per chunk
        stream={10: RoleCost(api_ms=1.0, worker_ms=1.0, redis_ms=0.2),
                110: RoleCost(api_ms=2.0, worker_ms=3.0, redis_ms=0.7)},
        # paced, 10 -> 110 chunks: per chunk 0.05 ms API, 0.1 ms worker, 0.01 ms Redis, 3 commands,
        # 1 PUBLISH and 100 B kept
        paced_stream={10: RoleCost(api_ms=1.5, worker_ms=2.0, redis_ms=0.3),
                      110: RoleCost(api_ms=6.5, worker_ms=12.0, redis_ms=1.3)},
        commands_paced_stream={10: 80.0, 110: 380.0}, publishes_paced_stream={10: 13.0, 110: 113.0},
        retained_bytes_paced_stream={10: 1500.0, 110: 11_500.0},
        commands_non_stream={1: 60.0, 64: 50.0}, commands_stream={10: 55.0, 110: 75.0},
        tag_commands={"provider": 30.0, "tenant": 15.0, "": 3.0, "*": 2.0},
        publishes_non_stream=2.0, publishes_stream={10: 3.0, 110: 13.0},
        redis_bytes_per_open_stream=1000.0, api_bytes_per_open_stream=40_000.0, worker_bytes_per_call=20_000.0,
        redis_bytes_per_queued_job=300.0, api_bytes_per_queued_request=100.0,
        retained_bytes_non_stream=200.0, retained_bytes_stream={10: 500.0, 110: 1500.0},
        result_ttl_s=60.0, stream_ttl_s=30.0,
        api_idle_rss_bytes=70e6, worker_idle_rss_bytes=60e6, worker_concurrency=64)
    fields.update(over)
    return Inputs(**fields)  # type: ignore[arg-type]


LOAD = Load(rps=1000, stream_share=0.5, output_tokens=60, upstream_latency_s=2.0, utilisation=0.5, paced=False)


def test_stream_cost_is_the_line_through_the_two_measured_chunk_counts() -> None:
    cost = stream_cost(inputs(), 60)
    assert (cost.api_ms, cost.worker_ms, cost.redis_ms) == pytest.approx((1.5, 2.0, 0.45))
    # below the first point the line goes on down, never below zero
    assert stream_cost(inputs(), 0).worker_ms == pytest.approx(0.8)


def test_request_cost_mixes_non_stream_and_stream_by_share() -> None:
    cost = request_cost(inputs(), LOAD)
    # 0.5 x non-stream (1.0, 0.5, 0.25) + 0.5 x a 60-chunk stream (1.5, 2.0, 0.45)
    assert (cost.api_ms, cost.worker_ms, cost.redis_ms) == pytest.approx((1.25, 1.25, 0.35))


def test_commands_use_the_loaded_non_stream_figure_and_the_stream_line() -> None:
    # 0.5 x 50 (c=64, not c=1's 60) + 0.5 x 65 (55 + 50 chunks x 0.2)
    assert commands_per_request(inputs(), LOAD) == pytest.approx(57.5)


def test_plan_counts_processes_by_cpu_and_workers_by_calls_in_flight() -> None:
    p = plan(inputs(), LOAD)
    assert (p.api_cores, p.worker_cores, p.redis_cores) == pytest.approx((1.25, 1.25, 0.35))
    assert p.api_procs == 3  # 1.25 cores at half a core each
    assert p.worker_procs_cpu == 3
    assert p.in_flight == pytest.approx(2000)  # 1000/s x 2 s
    assert p.worker_procs_calls == 32  # ceil(2000 / 64)
    assert p.worker_procs == 32
    assert p.redis_shards == 1
    assert p.cores == pytest.approx((1.25 + 1.25 + 0.35) / 0.5)
    # 1000 streams open (half the calls in flight) x 1000 B + 1 s of arrivals queued x 300 B
    # + finished ones until they expire: 500/s x 200 B x 60 s + 500/s x 1000 B (60 chunks) x 30 s
    assert p.redis_bytes == pytest.approx(1000 * 1000 + 1000 * 300 + 500 * 200 * 60 + 500 * 1000 * 30)
    # 3 idle API processes + 1000 open streams x 40 KB + (1000 non-stream waiting + 1000 queued) x 100 B
    assert p.api_bytes == pytest.approx(3 * 70e6 + 1000 * 40_000 + 2000 * 100)
    assert p.worker_bytes == pytest.approx(32 * 60e6 + 2000 * 20_000)
    assert p.api_procs_conns == 1  # 2000 in flight, 2048 a process
    assert p.first_bottleneck.startswith("requests in flight")


def test_one_hash_tag_caps_a_provider_whatever_the_shard_count() -> None:
    # the provider's tag is 30 of 50 commands of a request's own work (0.25 ms, a non-stream request's):
    # its shard tops out at 0.5 x 1000 / (0.25 x 0.6) = 3333 req/s
    p = plan(inputs(), msgspec.structs.replace(LOAD, rps=5000))
    assert p.hot_tag == "provider"
    assert p.hot_rps_cap == pytest.approx(1000 * 0.5 / (0.25 * 0.6))
    assert p.first_bottleneck.startswith("one hash tag's shard")
    assert p.redis_shards == math.ceil(5000 * 0.35 / 1000 / 0.5)  # 4: enough CPU, but not for one tag
    # spread over 4 providers and 4 tenants, the hottest tag is a provider's 30/50/4 = 0.15
    spread = plan(inputs(), msgspec.structs.replace(LOAD, rps=5000, provider_tags=4, tenant_tags=4))
    tag, share = hot_share(inputs(), spread.load)
    assert tag == "provider" and share == pytest.approx(0.15)
    assert spread.hot_rps_cap == pytest.approx(1000 * 0.5 / (0.25 * 0.15))  # 13,333: past the load
    # ...so the next limit is CPU: one shard serves 0.5 x 1000 / 0.35 = 1428.6 req/s of the mix
    assert spread.first_bottleneck.startswith("Redis: one shard")


def test_on_box_takes_the_least_of_the_cores_and_each_single_threaded_role() -> None:
    cost = RoleCost(api_ms=0.5, worker_ms=1.2, redis_ms=0.25, loadgen_ms=0.15, upstream_ms=0.1)  # 2.2 ms in all
    one = on_box(cost, cores=2, api_procs=1, worker_procs=1, redis_shards=1)
    assert one.rps == pytest.approx(1000 / 1.2) and one.limit == "worker processes"
    two = on_box(cost, cores=2, api_procs=1, worker_procs=2, redis_shards=1)
    assert two.rps == pytest.approx(2000 / 2.2) and two.limit == "the box's cores"
    assert two.share["worker"] == pytest.approx(1.2 / 2.2)
    # a Redis shard carrying 90% of the commands caps at 1 / (0.25 ms x 0.9); on a bigger box it binds
    hot = on_box(cost, cores=64, api_procs=64, worker_procs=64, redis_shards=3, redis_spread=0.9)
    assert hot.rps == pytest.approx(1000 / 0.225) and hot.limit == "the busiest Redis shard"


def test_shard_commands_put_tags_on_their_shard_and_spread_the_rest() -> None:
    tags = {"provider": 30.0, "tenant": 15.0, "": 3.0, "*": 3.0}
    assert shard_commands(tags, {"provider": 0, "tenant": 2}, 3) == pytest.approx([32.0, 2.0, 17.0])


def test_cluster_shards_pay_every_publish_so_past_a_rate_no_shard_count_will_do() -> None:
    # 5000/s x (0.5 x 2 + 0.5 x (3 + 50 chunks x 0.1)) = 25,000 PUBLISH/s, 10 us each on every shard:
    # 0.25 core of each shard's 0.5, so 1.75 cores of work need ceil(1.75 / 0.25) = 7 shards, not 4
    load = msgspec.structs.replace(LOAD, rps=5000, provider_tags=100, tenant_tags=100)
    p = plan(inputs(bus_publish_us=10.0), load)
    assert p.redis_shards_cpu == 4
    assert p.bus_cores_per_shard == pytest.approx(0.25)
    assert p.redis_shards == 7
    assert p.bus_rps_cap == pytest.approx(10_000)  # where 25,000/s x 2 fills the 0.5 core
    # every request pays 5 PUBLISH x 7 shards x 10 us on top of its own 0.35 ms
    assert p.redis_ms_cluster == pytest.approx(0.35 + 5 * 7 * 10 / 1000)
    # at 20 us a PUBLISH the broadcast alone fills the planned half core of every shard
    worse = plan(inputs(bus_publish_us=20.0), load)
    assert worse.redis_shards == 0
    assert worse.first_bottleneck.startswith("Cluster pub/sub")


def test_api_processes_hold_at_most_the_doors_in_flight_cap() -> None:
    # 1000/s x 10 s upstream = 10,000 requests waiting on their calls, 2048 a process
    p = plan(inputs(), msgspec.structs.replace(LOAD, upstream_latency_s=10.0))
    assert (p.api_procs_cpu, p.api_procs_conns, p.api_procs) == (3, 5, 5)
    assert "server.max_in_flight" in p.first_bottleneck


def test_paced_streams_follow_their_own_line() -> None:
    paced = msgspec.structs.replace(LOAD, paced=True)
    cost = stream_cost(inputs(), 60, paced=True)
    # 10 chunks' figures + 50 chunks x (0.05, 0.1, 0.01)
    assert (cost.api_ms, cost.worker_ms, cost.redis_ms) == pytest.approx((4.0, 7.0, 0.8))
    # 0.5 x 50 + 0.5 x (80 + 50 x 3)
    assert commands_per_request(inputs(), paced) == pytest.approx(0.5 * 50 + 0.5 * 230)
    assert publishes_per_request(inputs(), paced) == pytest.approx(0.5 * 2 + 0.5 * 63)
    # kept: 500/s x 200 B x 60 s + 500/s x (1500 + 50 x 100) B x 30 s, beside 1.3 MB in flight and queued
    assert plan(inputs(), paced).redis_bytes == pytest.approx(1000 * 1000 + 1000 * 300 + 500 * 200 * 60
                                                              + 500 * 6500 * 30)
