"""`redis.durability: replicated`: the writes a client is told of wait for replicas, in their own round trip.

Redis replicates asynchronously: a primary acknowledges a write before any replica has it, so one
killed in the next instant takes the write with it (README, "What a Sentinel failover can lose").
`WAIT numreplicas timeout` (https://redis.io/docs/latest/commands/wait/) blocks the connection that
sends it until `numreplicas` replicas have acknowledged every write that connection made before it,
or `timeout` ms passed, and answers how many did. It counts per connection (a connection that wrote
nothing gets its answer at once), so it rides in the same pipeline as the writes it protects, after
them and before what tells the client: one replica round trip, never one more client round trip.

- Enqueue (the API, broker/queue/streams.py): EVALSHA enqueue.lua, then WAIT. It also covers an
  async job's record, written just before on another connection: the replication stream is one
  ordered log, and the XADD's offset comes after the record's. Short of replicas, the job is
  withdrawn (cancelled, as for a client that left) and its client answered 503 `not_replicated`,
  Retry-After 1: it is never told "accepted" of a job a failover could lose.
- A job's end (the worker's outbox, broker/queue/outbox.py): its result key, its event log's end, its
  settled token bucket and the ledger of the ends acknowledged before it; then WAIT; then the end's
  PUBLISH, then finish.lua (XACK, XDEL). The XACK stays after the PUBLISH, as without WAIT: a worker
  killed while its flush waits (Redis drops a blocked client's queued commands with its connection)
  must leave the entry pending, to be reclaimed and answered, not acknowledged with its client never
  told. That XACK and the ledger entry it releases reach the replicas under the next flush's WAIT,
  which the ledger entry sends at once; a failover in between runs the job again (paid twice,
  answered once), as it would without WAIT. Short of replicas, the
  end is published anyway, counted (`llm_broker_replication_shortfall_total{at="end"}`, `at="ledger"`)
  and logged: the answer is computed and paid for, what a failover could then lose is what `async`
  loses, and withholding it would fail the client for a replica's lag.

Not configured (`async`), none of this runs: callers hold None and test it once.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from broker.config import RedisSettings
from broker.errors import NotReplicated
from broker.ops import metrics
from broker.store.scripts import Queued, evalsha_into

log = logging.getLogger(__name__)


class Replicated(NamedTuple):
    replicas: int
    timeout_ms: int

    def wait_into(self, pipe: Pipeline) -> int:
        """Queue WAIT after the writes already in `pipe`; returns the position of its reply."""
        position = len(pipe)
        pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
        return position

    def acks(self, reply: Any) -> int:
        """The replicas WAIT counted; an error (WAIT sent to a replica, a dropped connection) is raised."""
        if isinstance(reply, Exception):
            raise reply
        return int(reply)

    def not_replicated(self, acks: int) -> NotReplicated:
        metrics.REPLICATION_SHORTFALL.labels("enqueue").inc()
        log.warning("job withdrawn: %d of %d Redis replicas acknowledged its queueing within %d ms",
                    acks, self.replicas, self.timeout_ms)
        return NotReplicated(
            f"The broker could not confirm that this request was stored on {self.replicas} Redis replica(s) "
            f"within {self.timeout_ms} ms ({acks} confirmed), so it was not accepted; please retry shortly.",
            retry_after_s=1)

    def ends_short(self, acks: int, ends: int, counts: int) -> None:
        """Jobs' ends went out though fewer replicas than asked have them (why: the module's docstring)."""
        if ends:
            metrics.REPLICATION_SHORTFALL.labels("end").inc(ends)
        if counts:
            metrics.REPLICATION_SHORTFALL.labels("ledger").inc(counts)
        log.warning("%d job end(s) published and %d ledger entries written with %d of %d Redis replicas "
                    "acknowledging them within %d ms: a failover now could run those jobs again and lose "
                    "those entries", ends, counts, acks, self.replicas, self.timeout_ms)


def of(settings: RedisSettings) -> Replicated | None:
    """The policy `redis:` asks for; None for `async`, which waits for nothing."""
    if settings.durability == "async":
        return None
    return Replicated(settings.replicas, settings.wait_timeout_ms)


async def run_script(redis: Redis, durable: Replicated, script: AsyncScript, keys: list[Any],
                     args: list[Any]) -> tuple[Any, int]:
    """`script` and WAIT in one round trip: its reply and the replicas that acknowledged its writes.
    A Redis that lost its scripts (restarted, or a replica just promoted) gets it loaded in the same
    pipeline, once, so the WAIT still follows the write on its connection."""
    for load in (False, True):
        pipe = redis.pipeline(transaction=False)
        if load:
            pipe.script_load(script.script)
        call = evalsha_into(pipe, script, keys, args)
        waited = durable.wait_into(pipe)
        results = await pipe.execute(raise_on_error=False)
        reply = results[call.position]
        if isinstance(reply, NoScriptError) and not load:
            continue
        if isinstance(reply, Exception):
            raise reply
        return reply, durable.acks(results[waited])
    raise AssertionError("unreachable")


async def settle(redis: Redis, durable: Replicated, scripted: list[Queued], results: list[Any], waited: int, *,
                 ends: int, counts: int) -> None:
    """After a flush with a WAIT: the calls Redis answered NOSCRIPT sent again (as `resend_unknown` does)
    with their scripts loaded and a WAIT of their own, in one pipeline; then a shortfall counted."""
    unknown = [call for call in scripted if isinstance(results[call.position], NoScriptError)]
    wait_reply = results[waited]
    if unknown:
        pipe = redis.pipeline(transaction=False)
        for script in {id(call.script): call.script for call in unknown}.values():
            pipe.script_load(script.script)
        again = [evalsha_into(pipe, call.script, call.keys, call.args) for call in unknown]
        position = durable.wait_into(pipe)
        replies = await pipe.execute(raise_on_error=False)
        for call, sent in zip(unknown, again):
            results[call.position] = replies[sent.position]
        wait_reply = replies[position]
    if isinstance(wait_reply, Exception):
        return  # in the flush's results: its failures are raised there
    if (acks := int(wait_reply)) < durable.replicas:
        durable.ends_short(acks, ends, counts)
