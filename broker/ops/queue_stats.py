"""The queues as Redis sees them, read at scrape time: Prometheus gauges no process could count alone.

Per provider and lane: jobs waiting (not yet pulled), jobs pending (pulled, not yet acknowledged:
running, or held by a dead worker until reclaimed) and the age of the oldest job in the lane's
streams; per provider: live workers; per deployment: whether its circuit is open. The commands
are bounded by config (providers x lanes x the tenants with work), never by traffic, and sent in
two pipelined round trips.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from redis.asyncio import Redis

from broker.config import Config
from broker.keys import LANES, WORKER_GROUP, Keys


class LaneStats(msgspec.Struct):
    provider: str
    lane: str
    waiting: int = 0
    pending: int = 0
    oldest_age_s: float = 0.0


class QueueStats(msgspec.Struct):
    lanes: list[LaneStats]
    live_workers: dict[str, int]
    open_circuits: dict[str, bool]  # "provider/model" -> open


async def read(redis: Redis, keys: Keys, config: Config, providers: list[str] | None = None) -> QueueStats:
    """Every configured provider's figures, or only those of `providers`."""
    now_ms = time.time() * 1000
    worker_ttl_ms = config.queue.worker_ttl_s * 1000
    providers = list(config.providers) if providers is None else providers
    pipe = redis.pipeline(transaction=False)
    for p in providers:
        pipe.hgetall(keys.backlog(p))
        pipe.zcount(keys.workers(p), now_ms - worker_ttl_ms, "+inf")
        pipe.hgetall(keys.circuit(p))
        for lane in LANES:
            pipe.zrange(keys.active(p, lane), 0, -1)
    first: list[Any] = await pipe.execute()
    lanes: list[LaneStats] = []
    live: dict[str, int] = {}
    circuits: dict[str, bool] = {}
    streams: list[tuple[LaneStats, str]] = []
    at = 0
    for p in providers:
        backlog, workers, circuit = first[at], first[at + 1], first[at + 2]
        at += 3
        live[p] = int(workers)
        for field, value in circuit.items():
            name = field.decode()
            if ":" not in name:  # `<model>`: open until (ms)
                circuits[f"{p}/{name}"] = float(value) > now_ms
        for lane in LANES:
            stats = LaneStats(p, lane, waiting=int(backlog.get(lane.encode(), 0)))
            lanes.append(stats)
            streams += [(stats, keys.queue(p, lane, tenant.decode())) for tenant in first[at]]
            at += 1
    if streams:
        pipe = redis.pipeline(transaction=False)
        for _, stream in streams:
            pipe.xpending(stream, WORKER_GROUP)
            pipe.xrange(stream, count=1)
        second: list[Any] = await pipe.execute(raise_on_error=False)
        for i, (stats, _) in enumerate(streams):
            pending, oldest = second[2 * i], second[2 * i + 1]
            if isinstance(pending, dict):
                stats.pending += int(pending.get("pending", 0))
            if isinstance(oldest, list) and oldest:
                born_ms = int(oldest[0][0].split(b"-")[0])
                stats.oldest_age_s = max(stats.oldest_age_s, (now_ms - born_ms) / 1000)
    return QueueStats(lanes, live, circuits)


def _v(value: str) -> str:
    """A label value escaped as the text format wants it (names come from config, but be exact)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(stats: QueueStats) -> str:
    """The gauges in Prometheus' text format."""
    out = ["# HELP llm_broker_queue_waiting Jobs queued and not yet pulled by a worker",
           "# TYPE llm_broker_queue_waiting gauge"]
    out += [f'llm_broker_queue_waiting{{provider="{_v(s.provider)}",lane="{s.lane}"}} {s.waiting}' for s in stats.lanes]
    out += ["# HELP llm_broker_queue_pending Jobs pulled and not yet acknowledged (running, or awaiting reclaim)",
            "# TYPE llm_broker_queue_pending gauge"]
    out += [f'llm_broker_queue_pending{{provider="{_v(s.provider)}",lane="{s.lane}"}} {s.pending}' for s in stats.lanes]
    # One sample per provider, for autoscalers that read one series (KEDA's metrics-api scaler with
    # `format: prometheus` takes the first sample its selector matches: it cannot add lanes up).
    # Waiting and running together: scaling on waiting alone would shed the workers that keep it at 0.
    jobs: dict[str, int] = {}
    for s in stats.lanes:
        jobs[s.provider] = jobs.get(s.provider, 0) + s.waiting + s.pending
    out += ["# HELP llm_broker_queue_jobs Jobs waiting or running, all lanes: the provider's workers' work",
            "# TYPE llm_broker_queue_jobs gauge"]
    out += [f'llm_broker_queue_jobs{{provider="{_v(p)}"}} {n}' for p, n in jobs.items()]
    out += ["# HELP llm_broker_queue_oldest_age_seconds Age of the oldest job in the lane's streams",
            "# TYPE llm_broker_queue_oldest_age_seconds gauge"]
    out += [f'llm_broker_queue_oldest_age_seconds{{provider="{_v(s.provider)}",lane="{s.lane}"}} {s.oldest_age_s:.3f}'
            for s in stats.lanes]
    out += ["# HELP llm_broker_live_workers Workers with a recent heartbeat", "# TYPE llm_broker_live_workers gauge"]
    out += [f'llm_broker_live_workers{{provider="{_v(p)}"}} {n}' for p, n in stats.live_workers.items()]
    out += ["# HELP llm_broker_circuit_open 1 while a deployment's circuit is open",
            "# TYPE llm_broker_circuit_open gauge"]
    out += [f'llm_broker_circuit_open{{deployment="{_v(d)}"}} {int(o)}' for d, o in stats.open_circuits.items()]
    return "\n".join(out) + "\n"
