"""Running a batch: its input file's lines become broker jobs, their results its output files.

A batch runs in steps of at most STEP_S (broker/batches/worker.py chains them on arq), one step of a
batch at a time (a lock with the step's lifetime). Within a step it loops: queue more lines, at most
`batches.max_in_flight` at once, read from the input file where the last one stopped, so the file
never enters Redis; collect the results of those that ended; commit.

Every line runs as an async job (broker/queue/async_jobs.py) through the same lanes (`batch`), limits,
budgets, routing, failover and ledger as a live request, with an id derived from the batch and the
line number. Nothing is lost or written twice, whatever process dies when:
- a line is queued, then recorded in flight with the cursor; a line queued whose record was lost
  is found by its job's own record when its line is read again, and not queued twice;
- output lines are appended to the uncommitted output files at their recorded sizes, made durable
  in the file store (broker/batches/store.py), and only then are the lines removed from in flight
  together with the files' new sizes; what a dead step appended past them is overwritten or left
  out at commit, and lines still in flight are collected again from their results, which are kept
  `server.async_result_ttl_s`.
A tenant's rate limit or a full queue pauses the batch (backpressure); a budget that refuses a line
fails that line. Cancelled or past its window, the lines in flight are cancelled upstream and the
batch ends with what it has (past its window, every unfinished line is an error `batch_expired`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from redis.asyncio import Redis

from broker import api_keys
from broker.batches import files
from broker.batches import records as batches
from broker.batches.input import parse
from broker.batches.reader import LineReader
from broker.batches.records import BatchError, BatchErrors
from broker.config import ApiKey, Config
from broker.errors import BrokerError, OverBudget, RateLimited
from broker.keys import Keys
from broker.limits.admission import admit
from broker.limits.ratelimit import Limiter
from broker.queue import async_jobs, job_factory
from broker.queue.jobs import Failed, Final, reply_decoder
from broker.queue.payloads import payload_for
from broker.queue.streams import QueueScripts, cancel, enqueue_first
from broker.routing.router import Router
from broker.store.connection import get_many
from broker.store.scripts import lua_script
from broker.wire import ChatRequest, CompletionRequest, json_encoder

log = logging.getLogger(__name__)

STEP_S = 20.0
POLL_S = 0.2
WIND_DOWN_S = 3.0  # after cancelling its lines, how long a batch waits for their last results
PAUSE_S = 1.0  # a queue that refused a line is asked again after this
QUEUE_CONCURRENCY = 64  # lines queued at once (each is a few Redis round trips)

LineOutcome = Literal["queued", "done", "failed", "paused"]


class BatchContext:
    """What a batch worker process needs to run batches (built once per process)."""

    def __init__(self, config: Config, redis: Redis) -> None:
        self.config = config
        self.redis = redis
        self.keys = Keys(config.namespace)
        self.router = Router(config)
        self.limiter = Limiter(redis, self.keys)
        self.scripts = QueueScripts(redis)
        self.store = files.open_store(config.batches)
        self.commit = redis.register_script(lua_script("batch_commit"))


def line_job_id(batch_id: str, line: int) -> str:
    return hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:32]


class _Output(msgspec.Struct):
    id: str
    custom_id: str
    response: dict[str, Any] | None
    error: dict[str, Any] | None


class _Run:
    """One step of one batch."""

    def __init__(self, ctx: BatchContext, loaded: batches.Loaded) -> None:
        self.ctx, self.batch, self.tenant_name = ctx, loaded.batch, loaded.tenant
        self.key_name = loaded.fields.get(b"k", b"").decode() or None
        self.key: ApiKey | None = None  # its key's own limits, read again each step (`resume`)
        self.fields = loaded.fields
        self.line = int(loaded.fields.get(b"line", b"0"))  # lines read from the input so far
        self.offset = int(loaded.fields.get(b"offset", b"0"))  # and the byte after the last of them
        self.sizes = [int(loaded.fields.get(b"out_bytes", b"0")), int(loaded.fields.get(b"err_bytes", b"0"))]
        self.in_flight: dict[int, str] = {}  # line → custom_id
        self.exhausted = False
        self.paused_until = 0.0
        # Pending until the next commit:
        self.new_flight: dict[int, str] = {}
        self.done: list[int] = []
        self.out: list[list[bytes]] = [[], []]
        self.input: LineReader | None = None
        # The error of a line cut short by the batch's end (expired sets its own).
        self.ending = {"code": "batch_cancelled", "message": "The batch was cancelled."}

    @property
    def inflight_key(self) -> str:
        return self.ctx.keys.batch_inflight(self.batch.id)

    @property
    def done_key(self) -> str:
        return self.ctx.keys.batch_done(self.batch.id)

    async def resume(self) -> None:
        self.key = await api_keys.limits_of(self.ctx.redis, self.ctx.keys, self.ctx.config, self.tenant_name,
                                            self.key_name)
        raw = await self.ctx.redis.hgetall(self.inflight_key)  # type: ignore[misc]
        self.in_flight = {int(k): v.decode() for k, v in raw.items()}
        self.input = LineReader(self.ctx.store, self.batch.input_file_id, self.offset)

    # -------------------------------------------------------------- queueing lines

    async def _next_lines(self, count: int) -> list[tuple[int, bytes, int]]:
        """Up to `count` more lines: (number, line, the byte offset where it starts)."""
        assert self.input is not None
        found: list[tuple[int, bytes, int]] = []
        while len(found) < count:
            raw = await self.input.readline()
            if not raw:
                self.exhausted = True
                break
            self.line += 1
            self.offset += len(raw)
            if raw.strip():
                found.append((self.line, raw.rstrip(b"\n"), self.offset - len(raw)))
        return found

    async def queue_more(self) -> None:
        """Queue lines until the batch has `max_in_flight` running, QUEUE_CONCURRENCY at a time."""
        room = self.ctx.config.batches.max_in_flight - len(self.in_flight) - len(self.new_flight)
        while not self.exhausted and room > 0 and time.monotonic() >= self.paused_until:
            chunk = await self._next_lines(min(room, QUEUE_CONCURRENCY))
            outcomes = await asyncio.gather(*(self._queue(number, raw) for number, raw, _ in chunk))
            for (number, raw, start), (outcome, custom_id, error) in zip(chunk, outcomes):
                if outcome == "paused":
                    # Read again from here next time. Lines after it that were queued are found
                    # queued then (their job's record); their failures are not written twice: not now.
                    self.line, self.offset, self.exhausted = number - 1, start, False
                    self.input.seek(start)  # type: ignore[union-attr]
                    return
                if error is not None:
                    self._fail(number, custom_id, error)
                room -= 1

    async def _queue(self, number: int, raw: bytes) -> tuple[LineOutcome, str, BrokerError | None]:
        """Queue one line: (its outcome, its custom_id, the error it failed with). The outcome is
        "queued" (now, or before a crash), "done" (its output is written already), "failed" (write the
        error) or "paused" (a rate limit or a full queue: read it again later)."""
        ctx = self.ctx
        line, body = parse(raw)  # checked at upload: any error here is ours
        if isinstance(body, ChatRequest | CompletionRequest) and body.stream:
            body = msgspec.structs.replace(body, stream=False, stream_options=None)
        job_id = line_job_id(self.batch.id, number)
        if number in self.in_flight or number in self.new_flight:
            return "queued", line.custom_id, None
        check = ctx.redis.pipeline(transaction=False)
        check.getbit(self.done_key, number)
        check.exists(ctx.keys.job(job_id))
        written, queued = await check.execute()
        if written:  # read again after a pause or a crash: its output is written already
            return "done", line.custom_id, None
        if queued:  # queued before a crash lost its record here
            self.new_flight[number] = line.custom_id
            return "queued", line.custom_id, None
        tenant = ctx.config.tenants.get(self.tenant_name)
        if tenant is None:
            return "failed", line.custom_id, BrokerError("the batch's tenant no longer exists")
        server = ctx.config.server
        try:
            job = await job_factory.build(
                ctx.router, ctx.redis, ctx.keys, self.tenant_name, tenant, self.key_name, payload_for(body),
                lane="batch",
                timeout_s=max(1.0, min(server.async_timeout_s, self.batch.expires_at - time.time())),
                reply_to=ctx.keys.replies("async"), headers={}, async_ttl_s=server.async_result_ttl_s,
                job_id=job_id)
        except BrokerError as exc:  # a model it may not use, a request no deployment can serve
            return "failed", line.custom_id, exc
        try:
            admission = await admit(ctx.limiter, ctx.router.prices, self.tenant_name, tenant, self.key, job)
        except OverBudget as exc:
            return "failed", line.custom_id, exc
        except RateLimited as exc:
            self.paused_until = time.monotonic() + max(exc.retry_after_s or PAUSE_S, 0.05)
            return "paused", line.custom_id, None
        await async_jobs.submit(ctx.redis, ctx.keys, job)
        try:
            await enqueue_first(ctx.scripts, ctx.keys, ctx.config, job)
        except BrokerError:  # every candidate refused it now (queue full, no worker): later
            await ctx.limiter.refund(admission)
            await ctx.redis.delete(ctx.keys.job(job.id))
            self.paused_until = time.monotonic() + PAUSE_S
            return "paused", line.custom_id, None
        await ctx.limiter.release(admission)  # nobody holds a connection open for it
        self.new_flight[number] = line.custom_id
        return "queued", line.custom_id, None

    # -------------------------------------------------------------- results

    def _write(self, number: int, custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None,
               *, ok: bool) -> None:
        record = _Output(f"batch_req_{line_job_id(self.batch.id, number)[:24]}", custom_id, response, error)
        self.out[0 if ok else 1].append(json_encoder.encode(record) + b"\n")
        counts = self.batch.request_counts
        if ok:
            counts.completed += 1
        else:
            counts.failed += 1

    def _fail(self, number: int, custom_id: str, exc: BrokerError) -> None:
        self.done.append(number)
        body = msgspec.to_builtins(exc.to_body())
        self._write(number, custom_id, {"status_code": exc.status, "request_id": None, "body": body}, None, ok=False)

    async def collect(self) -> None:
        numbers = list(self.in_flight)
        for start in range(0, len(numbers), 500):
            chunk = numbers[start:start + 500]
            results = await get_many(self.ctx.redis, [self.ctx.keys.result(line_job_id(self.batch.id, n))
                                                      for n in chunk])
            for number, raw in zip(chunk, results):
                if raw is not None:
                    self._collected(number, reply_decoder.decode(raw))

    def _collected(self, number: int, reply: Any) -> None:
        custom_id = self.in_flight.pop(number)
        self.done.append(number)
        request_id = f"req_{line_job_id(self.batch.id, number)}"
        if isinstance(reply, Final):
            body = msgspec.json.decode(reply.body)
            self._write(number, custom_id, {"status_code": 200, "request_id": request_id, "body": body}, None, ok=True)
        elif isinstance(reply, Failed):
            if reply.error.code == async_jobs.CANCELLED_CODE:  # by the batch's wind-down
                self._write(number, custom_id, None, self.ending, ok=False)
                return
            err = BrokerError.from_info(reply.error)
            self._write(number, custom_id, {"status_code": err.status, "request_id": request_id,
                                            "body": msgspec.to_builtins(err.to_body())}, None, ok=False)

    async def commit(self, **extra: Any) -> None:
        """Outputs to the file store first, then (atomically) what they account for."""
        ctx = self.ctx
        for i, file_id in enumerate((self.batch.output_file_id, self.batch.error_file_id)):
            if self.out[i]:
                assert file_id is not None
                data = b"".join(self.out[i])
                await ctx.store.append(file_id, self.sizes[i], data)
                self.sizes[i] += len(data)
        fields = {"b": msgspec.json.encode(self.batch), "line": self.line, "offset": self.offset,
                  "out_bytes": self.sizes[0], "err_bytes": self.sizes[1], **extra}
        await ctx.commit(keys=[self.inflight_key, self.done_key, ctx.keys.batch(self.batch.id)], args=[
            self.batch.expires_at + 86_400,
            len(self.new_flight), *(v for n, custom_id in self.new_flight.items() for v in (n, custom_id)),
            len(self.done), *self.done,
            *(v for item in fields.items() for v in item)])
        if self.done:
            # In the output files now: their results need not wait out their TTL in Redis, so a batch
            # holds Redis memory for its lines in flight only, whatever its size. (After the commit, and
            # not in it: these keys are in other Cluster slots; a crash in between leaves them to expire.)
            ended = [line_job_id(self.batch.id, n) for n in self.done]
            await ctx.redis.delete(*(k for job_id in ended for k in (ctx.keys.result(job_id), ctx.keys.job(job_id))))
        self.in_flight.update(self.new_flight)
        self.new_flight, self.done, self.out = {}, [], [[], []]

    # -------------------------------------------------------------- ending

    def finished(self) -> bool:
        return self.exhausted and not self.in_flight and not self.new_flight

    async def wind_down(self, status: str) -> None:
        """Cancelled, or past its window: cancel what runs, keep what ended, end the batch."""
        ctx = self.ctx
        if status == "expired":
            self.ending = {"code": "batch_expired",
                           "message": "This request could not be executed before the completion window expired."}
        await self.commit()
        for number in list(self.in_flight):
            job_id = line_job_id(self.batch.id, number)
            record = await async_jobs.load(ctx.redis, ctx.keys, job_id, self.tenant_name)
            if record is not None:
                await cancel(ctx.redis, ctx.keys, record.record.providers, job_id, record.record.deadline)
        end = time.monotonic() + WIND_DOWN_S
        while self.in_flight and time.monotonic() < end:
            await self.collect()
            await asyncio.sleep(POLL_S)
        for number, custom_id in list(self.in_flight.items()):
            self.in_flight.pop(number)
            self.done.append(number)
            self._write(number, custom_id, None, self.ending, ok=False)
        if status == "expired":  # lines never queued count as expired too
            while not self.exhausted:
                for number, raw, _ in await self._next_lines(1000):
                    line, _ = parse(raw)
                    self._write(number, line.custom_id, None, self.ending, ok=False)
        await self.finalize(status)

    async def finalize(self, status: str) -> None:
        ctx, batch, now = self.ctx, self.batch, int(time.time())
        batch.status, batch.finalizing_at = "finalizing", batch.finalizing_at or now
        await self.commit()
        ttl = ctx.config.batches.file_ttl_days * 86_400
        for i, attr in enumerate(("output_file_id", "error_file_id")):
            file_id = getattr(batch, attr)
            if self.sizes[i] == 0:  # no line of that kind: no file, as OpenAI does
                await ctx.store.delete(file_id)
                setattr(batch, attr, None)
                continue
            await ctx.store.commit(file_id, self.sizes[i])
            name = f"{batch.id}_{'output' if i == 0 else 'error'}.jsonl"
            await files.save(ctx.redis, ctx.keys, files.StoredFile(files.FileObject(
                id=file_id, bytes=self.sizes[i], created_at=now, filename=name, purpose="batch_output",
                expires_at=now + ttl), self.tenant_name))
        batch.status = status  # type: ignore[assignment]
        setattr(batch, f"{status}_at", now)
        await batches.save(ctx.redis, ctx.keys, batch, ctx.config.batches.retention_days)
        await ctx.redis.delete(self.inflight_key, self.done_key)


async def start(ctx: BatchContext, loaded: batches.Loaded) -> bool:
    """validating → in_progress (or failed, if its input is gone); False if it failed."""
    batch = loaded.batch
    stored = await files.load(ctx.redis, ctx.keys, batch.input_file_id, loaded.tenant)
    now = int(time.time())
    if stored is None or stored.endpoint != batch.endpoint:
        batch.status, batch.failed_at = "failed", now
        batch.errors = BatchErrors([BatchError("invalid_file", "The input file is gone, or does not use the "
                                               f"batch's endpoint {batch.endpoint}.", "input_file_id")])
        await batches.save(ctx.redis, ctx.keys, batch, ctx.config.batches.retention_days)
        return False
    batch.status, batch.in_progress_at = "in_progress", now
    batch.request_counts.total = stored.lines
    batch.output_file_id, batch.error_file_id = files.new_file_id(), files.new_file_id()
    await batches.save(ctx.redis, ctx.keys, batch, ctx.config.batches.retention_days,
                       line=0, offset=0, out_bytes=0, err_bytes=0)
    return True


async def step(ctx: BatchContext, batch_id: str, *, step_s: float = STEP_S,
               alive: Callable[[], Awaitable[None]] | None = None) -> bool:
    """Run the batch for up to `step_s`, calling `alive()` between rounds (the worker's lock);
    True once it has ended (or is gone)."""
    loaded = await batches.load(ctx.redis, ctx.keys, batch_id)
    if loaded is None or loaded.batch.status in batches.ENDED:
        await ctx.redis.zrem(ctx.keys.active_batches(), batch_id)
        return True
    if loaded.batch.status == "validating":
        if not await start(ctx, loaded):
            return True
        loaded = await batches.load(ctx.redis, ctx.keys, batch_id)
        assert loaded is not None
    run = _Run(ctx, loaded)
    await run.resume()
    end = time.monotonic() + step_s
    while time.monotonic() < end:
        if alive is not None:
            await alive()
        cancel_asked = (await ctx.redis.hmget(ctx.keys.batch(batch_id), ["cancel"]))[0] is not None  # type: ignore[misc]
        if cancel_asked or time.time() >= run.batch.expires_at:
            await run.wind_down("cancelled" if cancel_asked else "expired")
            return True
        await run.queue_more()
        await run.collect()
        await run.commit()
        if run.finished():
            await run.finalize("completed")
            return True
        await asyncio.sleep(POLL_S)
    return False
