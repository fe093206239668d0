"""`python -m bench.capacity validate`: the capacity model against the box it runs on (docs/capacity.md).

One load generator (bench/loadgen.py, closed loop at c=64) against one API process and 1, then 2,
worker processes on one Redis; then against one worker on a Redis Cluster of 1 and of 3 masters of
its own (bench/cluster.py), non-stream and then paced streams; measured beside what
bench/capacity_model.py predicts from the inputs file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import redis

from bench.capacity import (CONCURRENCY, PROVIDER_NAME, TENANT_NAME, Nodes, Phase, Stack, load_inputs,
                            own_redis, run_phase)
from bench.capacity_model import (KEYLESS, PROVIDER, SPREAD, TENANT, Inputs, RoleCost, line_at, on_box,
                                  shard_commands, stream_cost)
from bench.cluster import Cluster, cmd
from bench.compare import BROKER_KEY
from bench.held import SlowProvider, serving
from bench.openloop import open_streams
from bench.procs import stop


def _tag_key(tag: str, namespace: str) -> str:
    """A key whose slot is the one `tag` (an Inputs.tag_commands entry) names, in `namespace`."""
    if tag == PROVIDER:
        return f"{namespace}:{{{PROVIDER_NAME}}}:x"
    if tag == TENANT:
        return f"{namespace}:rl:{{{TENANT_NAME}}}:x"
    return tag.replace("{ns}", namespace)


def _split(cost: RoleCost) -> str:
    total = cost.broker_ms + cost.loadgen_ms + cost.upstream_ms
    return (f"{cost.api_ms / total:4.0%} {cost.worker_ms / total:4.0%} {cost.redis_ms / total:4.0%} "
            f"{(cost.loadgen_ms + cost.upstream_ms) / total:4.0%}")


def validate(opts: argparse.Namespace) -> None:
    inputs = load_inputs(Path(opts.inputs))
    cores = float(os.cpu_count() or 1)
    lo = min(inputs.stream)
    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-capacity-"))
    began = time.monotonic()
    print(f"inputs {opts.inputs}: measured {inputs.measured_at} on {inputs.machine}"
          f"{'' if inputs.quiet else ' (under contention)'}; now load average {os.getloadavg()[0]:.2f}, "
          f"{cores:.0f} cores; logs in {tmp}", flush=True)
    table = [f"{'setup':<26} {'mode':<10} {'req/s':>6} {'pred':>5} {'pred*':>5}  {'limit (pred)':<23} "
             f"{'ms/req':>6} {'pred':>5}  {'others':>6}  CPU split API/worker/Redis/bench: measured | predicted"]

    def row(setup: str, stream: bool, phase: Phase, procs: tuple[int, int, int], spread: float = 1.0) -> None:
        cost = stream_cost(inputs, lo) if stream else inputs.non_stream
        pred = on_box(cost, cores, *procs, redis_spread=spread)
        got = on_box(cost, max(0.1, cores - phase.others_cores), *procs, redis_spread=spread)
        table.append(f"{setup:<26} {'stream' if stream else 'non-stream':<10} {phase.stats.throughput_rps:6.0f} "
                     f"{pred.rps:5.0f} {got.rps:5.0f}  {pred.limit:<23} {phase.cost.broker_ms:6.3f} "
                     f"{cost.broker_ms:5.3f}  {phase.others_cores:6.2f}  {_split(phase.cost)} | {_split(cost)}")

    with own_redis() as url:  # (a) 1 and 2 worker processes, one API process, one Redis
        stack = Stack(tmp, url, {PROVIDER_NAME: lo})
        try:
            nodes = Nodes([redis.Redis.from_url(url)])
            for workers in (1, 2):
                stack.set_workers(PROVIDER_NAME, workers)
                for stream in (False, True):
                    total = opts.stream_requests if stream else opts.requests
                    row(f"1 API + {workers} worker", stream, run_phase(stack, nodes, PROVIDER_NAME, total, stream),
                        (1, workers, 1))
        finally:
            stack.stop()

    shard_rows = [f"{'cluster':<10} {'node':>4} {'slots':>12} {'commands/req meas':>17} {'pred':>6} "
                  f"{'Redis CPU ms/req meas':>21} {'pred':>6}"]
    bus_rows = [f"{'cluster':<10} {'node':>4} {'PUBLISH sent':>12} {'received over the bus: meas':>27} {'pred':>6} "
                f"{'CPU ms/stream':>13} {'broadcast part (pred)':>21}"]
    for masters in (1, 3):  # (b) the same load on a Redis Cluster of 1 and of 3 masters
        directory = tmp / f"cluster-{masters}"
        directory.mkdir()
        cluster = Cluster(directory, masters)
        stack = Stack(tmp, cluster.url, {PROVIDER_NAME: lo}, slow={"hold": 4096})
        try:
            stack.set_workers(PROVIDER_NAME, 1)
            phase = run_phase(stack, Nodes(cluster.clients), PROVIDER_NAME, opts.requests, False)
            stack.set_workers(PROVIDER_NAME, 0)
            bus_rows += _broadcast(stack, cluster, inputs, opts.paced_streams)
            tag_node = {t: cluster.node_of(_tag_key(t, stack.namespace))
                        for t in inputs.tag_commands if t not in (SPREAD, KEYLESS)}
            per_node = shard_commands(inputs.tag_commands, tag_node, masters)
            share = [n / sum(per_node) for n in per_node]
            row(f"1 API + 1 worker, {masters}-master", False, phase, (1, 1, masters), max(share))
            loaded = inputs.commands_non_stream[max(inputs.commands_non_stream)]
            for i in range(masters):
                first, last = cluster.range(i)
                shard_rows.append(f"{masters}-master {i:>4} {first:>5}-{last:<6} {phase.node_commands[i]:17.1f} "
                                  f"{loaded * share[i]:6.1f} {phase.node_redis_ms[i]:21.3f} "
                                  f"{inputs.non_stream.redis_ms * share[i]:6.3f}")
        finally:
            stack.stop()
            cluster.stop()
    print(f"\nmeasured against predicted ({cores:.0f} cores, load generator closed loop at c={CONCURRENCY}, "
          f"streams of {lo} chunks). pred: the model on the whole box; pred*: on the cores left by 'others', "
          "the CPU the box spent outside the stack during the run (other users); ms/req: API + worker + Redis "
          "CPU per request; 'bench' = load generator + fake upstream")
    print("\n".join(table))
    print("\nper Redis Cluster node, non-stream (predicted: the inputs' commands by hash tag, each tag on the "
          "node owning its slot)")
    print("\n".join(shard_rows))
    print(f"\nper Redis Cluster node, paced streams of {PACED_CHUNKS} chunks {PACED_GAP_S * 1000:.0f} ms apart, per "
          "stream (predicted: every node receives every PUBLISH sent to another, the inputs' paced PUBLISH per "
          "stream in all; its CPU at the inputs' bus_publish_us)")
    print("\n".join(bus_rows))
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end; run took {time.monotonic() - began:.0f} s")


PACED_CHUNKS, PACED_GAP_S = 80, 0.05


def _bus_received(client: redis.Redis) -> int:
    """PUBLISH messages this Cluster node got from the others over the bus (CLUSTER INFO's
    cluster_stats_messages_publish_received)."""
    return int(cmd(client, "CLUSTER INFO").get("cluster_stats_messages_publish_received", 0))


def _broadcast(stack: Stack, cluster: Cluster, inputs: Inputs, count: int) -> list[str]:
    """Paced streams on the Cluster: what each node sent and received of their PUBLISHes, and its CPU
    (its idle rate, measured first, taken off)."""
    procs = serving(SlowProvider("hold", "m-hold", stack.ports["hold"], PACED_CHUNKS, PACED_GAP_S), stack.config,
                     stack.tmp)
    try:
        nodes = Nodes(cluster.clients)
        asyncio.run(open_streams(stack.url, BROKER_KEY, "m-hold", count=5, rate=100))  # first-use paths
        idle0, t0 = nodes.snap(), time.monotonic()
        time.sleep(2.0)
        idle = [(after[0] - before[0]) / (time.monotonic() - t0) for before, after in zip(idle0, nodes.snap())]
        s0, b0, t1 = nodes.snap(), [_bus_received(c) for c in cluster.clients], time.monotonic()
        outcomes = asyncio.run(open_streams(stack.url, BROKER_KEY, "m-hold", count=count, rate=100.0))
        s1, b1, took = nodes.snap(), [_bus_received(c) for c in cluster.clients], time.monotonic() - t1
    finally:
        for proc in procs:
            stop(proc)
    done = max(sum(1 for o in outcomes if o.completed), 1)
    sent = [(after[2] - before[2]) / done for before, after in zip(s0, s1)]
    expected = line_at(inputs.publishes_paced_stream, PACED_CHUNKS)
    rows = []
    for i in range(len(cluster.clients)):
        cpu = ((s1[i][0] - s0[i][0]) - idle[i] * took) * 1000 / done
        others = expected * (1 - sent[i] / max(sum(sent), 1e-9))  # the PUBLISHes that left from other nodes
        rows.append(f"{len(cluster.clients)}-master {i:>4} {sent[i]:12.1f} {(b1[i] - b0[i]) / done:27.1f} "
                    f"{others:6.1f} {cpu:13.3f} {others * inputs.bus_publish_us / 1000:21.3f}")
    return rows
