"""The capacity model: how many API processes, workers, Redis shards, cores and bytes a load needs,
from per-request figures measured on a real stack (`python -m bench.capacity measure` writes them to
bench/capacity_inputs.json). Pure arithmetic, no I/O: docs/capacity.md states the formulas and
tests/test_capacity_model.py checks them against hand-computed cases.

The premises, each a fact about the code rather than a fit:
  - An API or worker process is one asyncio event loop under the GIL: it uses at most one core, so a
    role needs (its CPU-seconds per second) / (a usable fraction of a core) processes.
  - Redis runs commands on one thread: a shard is at most one core, whatever the box has.
  - Every key one script touches shares a hash tag (broker/keys.py), so all of one provider's queue
    work (`{p}`) lands on one shard, and all of one tenant's limits and ledger (`{tenant}`) on one
    shard: whatever the shard count, one provider and one tenant are each capped by one shard.
  - Little's law: calls in flight upstream = rate x upstream latency; a worker holds at most
    `concurrency` of them (providers' `concurrency`, default 64, broker/config/providers.py).
  - Replies travel by classic PUBLISH, which a Cluster broadcasts to every node: each shard pays
    for every reply in the cluster, a cost that does not shrink as shards are added.
"""

from __future__ import annotations

import math

import msgspec


class RoleCost(msgspec.Struct, kw_only=True):
    """CPU milliseconds per request, by role."""

    api_ms: float
    worker_ms: float
    redis_ms: float
    loadgen_ms: float = 0.0  # the benchmark's own client and fake upstream: on a real deployment
    upstream_ms: float = 0.0  # they live elsewhere, on this box they share its cores

    @property
    def broker_ms(self) -> float:
        return self.api_ms + self.worker_ms + self.redis_ms

    def plus(self, other: RoleCost, weight: float = 1.0) -> RoleCost:
        return RoleCost(api_ms=self.api_ms + weight * other.api_ms,
                        worker_ms=self.worker_ms + weight * other.worker_ms,
                        redis_ms=self.redis_ms + weight * other.redis_ms,
                        loadgen_ms=self.loadgen_ms + weight * other.loadgen_ms,
                        upstream_ms=self.upstream_ms + weight * other.upstream_ms)


class Inputs(msgspec.Struct, kw_only=True):
    """What `bench.capacity measure` measured; bench/capacity_inputs.json holds one set."""

    measured_at: str  # UTC, ISO 8601
    machine: str  # CPU model and core count
    commit: str
    quiet: bool  # False: other processes shared the cores while it ran (timings noisy)
    concurrency: int  # the load generator's, for the CPU figures
    non_stream: RoleCost
    stream: dict[int, RoleCost]  # chunks per stream -> CPU per stream; two points give a line
    # Streams whose chunks come paced (a slow fake), each a flush of its own as a real model's tokens
    # are, where the fast fake's burst leaves in one or two: chunks -> per stream, two chunk counts.
    paced_stream: dict[int, RoleCost]
    commands_paced_stream: dict[int, float]
    publishes_paced_stream: dict[int, float]
    retained_bytes_paced_stream: dict[int, float]
    commands_non_stream: dict[int, float]  # client concurrency -> Redis commands per request
    commands_stream: dict[int, float]  # chunks -> Redis commands per stream (at `concurrency`)
    # Commands per non-stream request (MONITOR, c=1) by what picks their slot: "provider" (`{p}`),
    # "tenant" (`{tenant}`), "" (a key of the request's own, e.g. `result:<job>`: spread over every shard),
    # "*" (keyless: PUBLISH, ...), or a fixed key with the namespace as "{ns}" (one slot whatever the load).
    tag_commands: dict[str, float]
    publishes_non_stream: float  # PUBLISH per request: on a Cluster every shard forwards each one
    publishes_stream: dict[int, float]  # chunks -> PUBLISH per stream
    redis_bytes_per_open_stream: float
    api_bytes_per_open_stream: float
    worker_bytes_per_call: float  # worker RSS per upstream call in flight
    redis_bytes_per_queued_job: float
    # What a finished request leaves in Redis until it expires (its `result:<job>`, a stream's
    # `ev:<job>` log), and for how long: server.result_ttl_s, server.stream_resume_ttl_s (both 60 s).
    retained_bytes_non_stream: float
    retained_bytes_stream: dict[int, float]  # chunks -> bytes
    result_ttl_s: float
    stream_ttl_s: float
    api_bytes_per_queued_request: float
    api_idle_rss_bytes: float
    worker_idle_rss_bytes: float
    worker_concurrency: int  # providers' `concurrency` default: calls in flight per worker process
    api_max_in_flight: int = 2048  # `server.max_in_flight` default: requests one API process holds (api/door.py)
    # CPU microseconds a Cluster node spends on a PUBLISH sent to another node: a classic PUBLISH is
    # forwarded over the cluster bus to every node (https://redis.io/commands/publish/; SPUBLISH,
    # https://redis.io/commands/spublish/, stays within its shard), so each shard pays it for every reply.
    bus_publish_us: float = 0.0


class Load(msgspec.Struct, kw_only=True):
    rps: float
    stream_share: float  # 0..1
    output_tokens: float  # mean, per request
    upstream_latency_s: float  # mean duration of one upstream call (the whole answer, for a stream)
    tokens_per_chunk: float = 1.0  # OpenAI-style streams send about one token per content delta
    paced: bool = True  # chunks come apart (a real model), not in one burst (the fast fake)
    queued_s: float = 1.0  # a backlog of this many seconds of arrivals is held in Redis (bursts)
    utilisation: float = 0.7  # the share of a core a process or shard is planned to use
    provider_tags: int = 1  # providers the load spreads over (one `{p}` hash tag each)
    tenant_tags: int = 1  # tenants it spreads over (one `{tenant}` hash tag each)
    worker_concurrency: int | None = None  # a provider's `concurrency`, if not the default (Inputs')


def chunks(load: Load) -> float:
    return load.output_tokens / load.tokens_per_chunk


def line_at(points: dict[int, float], x: float) -> float:
    """The straight line through the two outermost measured points, at x (cost = fixed + per-chunk x)."""
    lo, hi = min(points), max(points)
    if lo == hi:
        return points[lo]
    slope = (points[hi] - points[lo]) / (hi - lo)
    return points[lo] + slope * (x - lo)


_FIELDS = ("api_ms", "worker_ms", "redis_ms", "loadgen_ms", "upstream_ms")


def stream_cost(inputs: Inputs, n_chunks: float, paced: bool = False) -> RoleCost:
    """CPU per stream of `n_chunks`, per role, on the line through the measured chunk counts, paced or burst."""
    points = inputs.paced_stream if paced else inputs.stream
    return RoleCost(**{f: max(0.0, line_at({c: getattr(r, f) for c, r in points.items()}, n_chunks)) for f in _FIELDS})


def request_cost(inputs: Inputs, load: Load) -> RoleCost:
    """CPU per request of the load's mix of streams and non-streams."""
    s = load.stream_share
    return RoleCost(api_ms=0, worker_ms=0, redis_ms=0).plus(inputs.non_stream, 1 - s).plus(
        stream_cost(inputs, chunks(load), load.paced), s)


def commands_per_request(inputs: Inputs, load: Load) -> float:
    high_c = max(inputs.commands_non_stream)  # the loaded figure: batching lowers it under load
    non_stream = inputs.commands_non_stream[high_c]
    stream = max(0.0, line_at(inputs.commands_paced_stream if load.paced else inputs.commands_stream, chunks(load)))
    return (1 - load.stream_share) * non_stream + load.stream_share * stream


def publishes_per_request(inputs: Inputs, load: Load) -> float:
    stream = max(0.0, line_at(inputs.publishes_paced_stream if load.paced else inputs.publishes_stream, chunks(load)))
    return (1 - load.stream_share) * inputs.publishes_non_stream + load.stream_share * stream


PROVIDER, TENANT, SPREAD, KEYLESS = "provider", "tenant", "", "*"


def hot_share(inputs: Inputs, load: Load) -> tuple[str, float]:
    """The hash tag carrying the largest share of the load's Redis commands, and that share: a provider's
    tag carries its share of the commands over the providers the load spreads across, a tenant's
    likewise, a fixed key ("{ns}:usage:log") all of its own; spread and keyless commands go anywhere."""
    total = sum(inputs.tag_commands.values())
    if total <= 0:
        return "", 0.0
    over = {PROVIDER: load.provider_tags, TENANT: load.tenant_tags}
    shares = {t: n / total / over.get(t, 1) for t, n in inputs.tag_commands.items() if t not in (SPREAD, KEYLESS)}
    if not shares:
        return "", 0.0
    tag = max(shares, key=shares.__getitem__)
    return tag, shares[tag]


class Plan(msgspec.Struct, kw_only=True):
    load: Load
    cost: RoleCost  # CPU per request
    api_cores: float
    worker_cores: float
    redis_cores: float
    api_procs_cpu: int  # API processes needed for CPU
    api_procs_conns: int  # ...and to hold the requests in flight under the door's cap
    api_procs: int
    worker_procs_cpu: int  # workers needed for CPU
    in_flight: float  # upstream calls in flight (Little's law)
    worker_procs_calls: int  # workers needed to hold the calls in flight at `concurrency` each
    worker_procs: int
    redis_shards_cpu: int  # shards for Redis CPU, if the work spread evenly and PUBLISH were free
    bus_cores_per_shard: float  # each shard's CPU for the PUBLISHes other shards forward to it
    redis_ms_cluster: float  # Redis CPU per request, the broadcast to every shard included
    bus_rps_cap: float  # the rate at which the broadcast alone fills every shard's planned share
    hot_tag: str
    hot_rps_cap: float  # the rate one provider (or tenant) tops out at: its tag's share on one shard
    redis_shards: int
    commands_per_s: float
    commands_per_shard_s: float
    publish_per_shard_s: float  # on a Cluster every shard forwards every PUBLISH
    cores: float  # API + worker + Redis cores, at the planned utilisation
    redis_bytes: float
    api_bytes: float
    worker_bytes: float
    first_bottleneck: str


def plan(inputs: Inputs, load: Load) -> Plan:
    cost = request_cost(inputs, load)
    u = load.utilisation
    api_cores = load.rps * cost.api_ms / 1000
    worker_cores = load.rps * cost.worker_ms / 1000
    redis_cores = load.rps * cost.redis_ms / 1000
    api_cpu = max(1, math.ceil(api_cores / u))
    worker_cpu = max(1, math.ceil(worker_cores / u))
    in_flight = load.rps * load.upstream_latency_s
    api_conns = max(1, math.ceil(in_flight / inputs.api_max_in_flight))  # every request waits on its call
    api_procs = max(api_cpu, api_conns)
    worker_calls = max(1, math.ceil(in_flight / (load.worker_concurrency or inputs.worker_concurrency)))
    shards_cpu = max(1, math.ceil(redis_cores / u))
    # One tag's work cannot leave its shard: the hottest tag's share of a request's own work (admission,
    # queue, pull, finish, ledger: a non-stream request's commands; a stream's chunks add spread and
    # keyless ones only) must fit in one.
    tag, share = hot_share(inputs, load)
    shard_rps = u * 1000 / cost.redis_ms if cost.redis_ms > 0 else math.inf  # requests/s one shard serves
    hot_ms = inputs.non_stream.redis_ms * share
    hot_cap = u * 1000 / hot_ms if hot_ms > 0 else math.inf
    # On a Cluster each shard also takes every PUBLISH of the others: S shards need
    # redis_cores / S + bus <= u, so S = redis_cores / (u - bus); past bus >= u no shard count will do.
    publishes = load.rps * publishes_per_request(inputs, load)
    bus = publishes * inputs.bus_publish_us / 1e6
    bus_cap = load.rps * u / bus if bus > 0 else math.inf
    if shards_cpu == 1:
        shards = 1
    elif bus < u:
        shards = max(2, math.ceil(redis_cores / (u - bus)))
    else:
        shards = 0  # no count of shards carries it: see first_bottleneck
    commands = load.rps * commands_per_request(inputs, load)
    queued = load.rps * load.queued_s
    streams = in_flight * load.stream_share
    # Finished requests stay until their TTL: rate x share x bytes x TTL (Little's law again).
    kept_points = inputs.retained_bytes_paced_stream if load.paced else inputs.retained_bytes_stream
    kept_stream = max(0.0, line_at(kept_points, chunks(load)))
    retained = load.rps * ((1 - load.stream_share) * inputs.retained_bytes_non_stream * inputs.result_ttl_s
                           + load.stream_share * inputs.stream_ttl_s * kept_stream)
    redis_bytes = (streams * inputs.redis_bytes_per_open_stream + queued * inputs.redis_bytes_per_queued_job
                   + retained)
    api_bytes = (api_procs * inputs.api_idle_rss_bytes + streams * inputs.api_bytes_per_open_stream
                 + (in_flight - streams + queued) * inputs.api_bytes_per_queued_request)
    workers = max(worker_cpu, worker_calls)
    worker_bytes = workers * inputs.worker_idle_rss_bytes + in_flight * inputs.worker_bytes_per_call
    return Plan(load=load, cost=cost, api_cores=api_cores, worker_cores=worker_cores, redis_cores=redis_cores,
                api_procs_cpu=api_cpu, api_procs_conns=api_conns, api_procs=api_procs, worker_procs_cpu=worker_cpu, in_flight=in_flight,
                worker_procs_calls=worker_calls, worker_procs=workers, redis_shards_cpu=shards_cpu,
                bus_cores_per_shard=bus if shards != 1 else 0.0,
                bus_rps_cap=bus_cap,
                redis_ms_cluster=cost.redis_ms + (publishes / load.rps * shards * inputs.bus_publish_us / 1000
                                                  if shards > 1 else 0.0),
                hot_tag=tag, hot_rps_cap=hot_cap, redis_shards=shards, commands_per_s=commands,
                commands_per_shard_s=commands / max(shards, 1), publish_per_shard_s=publishes if shards != 1 else 0.0,
                cores=(api_cores + worker_cores + redis_cores) / u + (shards * bus if shards > 1 else 0.0),
                redis_bytes=redis_bytes, api_bytes=api_bytes,
                worker_bytes=worker_bytes, first_bottleneck=_bottleneck(load, shard_rps, hot_cap, worker_cpu,
                                                                         worker_calls, shards, api_cpu, api_conns,
                                                                         bus / u, bus_cap))


def _bottleneck(load: Load, shard_rps: float, hot_cap: float, worker_cpu: int, worker_calls: int,
                shards: int, api_cpu: int, api_conns: int, bus_share: float, bus_cap: float) -> str:
    """What gives out first if this load is run as planned, in the order a scale-out meets them."""
    if shards == 0:
        return ("Cluster pub/sub: every shard takes every reply's PUBLISH, more than a shard's CPU, so "
                "adding shards no longer helps (sharded pub/sub, SPUBLISH, or several clusters)")
    if load.rps > hot_cap:
        return (f"one hash tag's shard: the hottest provider/tenant tag tops out at {hot_cap:,.0f} req/s, "
                "so the load must spread over more providers/tenants (or the tag be split)")
    if load.rps > shard_rps:
        return (f"Redis: one shard serves {shard_rps:,.0f} req/s, so a Cluster of {shards}; the PUBLISH "
                f"broadcast takes {bus_share:.0%} of each shard's planned share, all of it at {bus_cap:,.0f} req/s")
    if worker_calls > worker_cpu or api_conns > api_cpu:
        return ("requests in flight, not CPU, set the process count (workers at `concurrency` calls each"
                + (", API processes at `server.max_in_flight`" if api_conns > api_cpu else "") + ")")
    return "API and worker CPU (processes scale out; Redis has headroom)"


class BoxPrediction(msgspec.Struct, kw_only=True):
    """One box of `cores` running everything the benchmark runs, each API/worker process one core at most."""

    rps: float
    limit: str  # what sets it
    share: dict[str, float]  # predicted share of the box's busy CPU by role


def on_box(cost: RoleCost, cores: float, api_procs: int, worker_procs: int, redis_shards: int,
           redis_spread: float = 1.0) -> BoxPrediction:
    """Saturation throughput of a closed loop on one box: the least of the box's cores over the CPU of
    a request (every role, the load generator and fake upstream included) and each single-threaded
    role's processes over its CPU per request. `redis_spread`: the busiest shard's share of Redis CPU."""
    total = cost.broker_ms + cost.loadgen_ms + cost.upstream_ms
    caps = {"the box's cores": cores * 1000 / total}
    if cost.api_ms > 0:
        caps["API processes"] = api_procs * 1000 / cost.api_ms
    if cost.worker_ms > 0:
        caps["worker processes"] = worker_procs * 1000 / cost.worker_ms
    if cost.redis_ms > 0:
        caps["the busiest Redis shard"] = 1000 / (cost.redis_ms * (redis_spread if redis_shards > 1 else 1.0))
    limit = min(caps, key=caps.__getitem__)
    share = {"api": cost.api_ms / total, "worker": cost.worker_ms / total, "redis": cost.redis_ms / total,
             "loadgen+upstream": (cost.loadgen_ms + cost.upstream_ms) / total}
    return BoxPrediction(rps=caps[limit], limit=limit, share=share)


def shard_commands(tag_commands: dict[str, float], tag_shard: dict[str, int], shards: int) -> list[float]:
    """Commands per request on each shard: a named tag's on the shard owning its slot (`tag_shard`), the
    spread and keyless ones evenly over all."""
    out = [0.0] * shards
    for tag, n in tag_commands.items():
        if tag in (SPREAD, KEYLESS):
            for i in range(shards):
                out[i] += n / shards
        else:
            out[tag_shard[tag]] += n
    return out
