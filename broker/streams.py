"""Job streams: XADD on the API side, consumer groups and XREADGROUP on the worker side.

One stream per provider and lane (`Keys.jobs`), one consumer group per stream,
so each job is delivered to exactly one worker. A finished job's entry is
XACK'd and XDEL'd in the same pipeline as its final reply (see
`replies.ReplyPublisher`), so the stream holds only the backlog and jobs in
flight; `STREAM_MAXLEN` is a safety cap on top.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from broker.jobs import Job, job_decoder, job_encoder
from broker.keys import STREAM_MAXLEN, WORKER_GROUP, Keys

JOB_FIELD = b"job"


async def enqueue(redis: Redis, keys: Keys, job: Job) -> bytes:
    entry_id: bytes = await redis.xadd(
        keys.jobs(job.provider, job.lane),
        {JOB_FIELD: job_encoder.encode(job)},
        maxlen=STREAM_MAXLEN,
        approximate=True,
    )
    return entry_id


async def ensure_group(redis: Redis, stream: str) -> None:
    # id="0": a group created after jobs were queued still delivers them.
    try:
        await redis.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def read_jobs(
    redis: Redis, stream: str, consumer: str, *, count: int, block_ms: int
) -> list[tuple[bytes, Job | None]]:
    """New entries for this consumer; an undecodable entry comes back as None (to be dropped)."""
    response = await redis.xreadgroup(WORKER_GROUP, consumer, {stream: ">"}, count=count, block=block_ms)
    jobs: list[tuple[bytes, Job | None]] = []
    for _stream, entries in response or ():
        for entry_id, fields in entries:
            try:
                jobs.append((entry_id, job_decoder.decode(fields[JOB_FIELD])))
            except Exception:  # a corrupt or foreign entry must not kill the worker
                jobs.append((entry_id, None))
    return jobs
