"""bench/openloop.py against the fake upstream: arrivals on schedule are all answered, and a burst's
streams are each told apart (served, refused with Retry-After). No timings are asserted: the machine
is shared."""

from __future__ import annotations

import asyncio

from bench.openloop import BurstStats, open_streams, run_open_loop
from tests.fakes.openai_upstream import UpstreamServer


def test_open_loop_sends_every_arrival_and_counts_every_answer() -> None:
    with UpstreamServer(chunks=3) as upstream:
        plain = asyncio.run(run_open_loop(upstream.base_url, "k", "fake-model", rate=200, total=40))
        streamed = asyncio.run(run_open_loop(upstream.base_url, "k", "fake-model", rate=200, total=20, stream=True))
    assert (plain.sent, plain.requests, plain.errors, plain.dropped) == (40, 40, 0, 0)
    assert (streamed.requests, streamed.errors) == (20, 0)
    assert streamed.ttft_p50_ms is not None and plain.ttft_p50_ms is None


def test_a_burst_tells_served_streams_from_honest_refusals() -> None:
    with UpstreamServer(chunks=3) as upstream:
        served = asyncio.run(open_streams(upstream.base_url, "k", "fake-model", count=10, rate=500))
        refused = asyncio.run(open_streams(upstream.base_url, "k", "fail-429", count=5, rate=500))
    stats = BurstStats.of(served + refused, elapsed_s=1.0)
    assert (stats.served, stats.refused, stats.other, stats.resets, stats.unanswered) == (10, 5, 0, 0, 0)
    assert stats.passed
