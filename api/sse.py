"""SSE framing, keep-alives, and errors after the 200: OpenAI's here, and the `Dialect` by which the
other inbound protocols write theirs (api/dialects.py).

Server-sent events (https://html.spec.whatwg.org/multipage/server-sent-events.html) as the
`openai` Python SDK reads them (`src/openai/_streaming.py`: `SSEDecoder.decode`, `Stream.__stream__`).
Events are `data: <one-line JSON>\\n\\n`, the stream ends with `data: [DONE]`.
The 200 is held back until the first reply (or `stream_first_byte_hold_s`), so
a job that fails before producing anything still gets a real HTTP status the
SDK can retry on. After the first byte the status cannot change: an error is
then a `data: {"error": {...}}` event followed by `[DONE]`. Keep-alives are SSE
comments, invisible to the SDK; never `event: ping` (SDKs yield it as a chunk).
Events carry `id: <attempt>.<index>` lines, so a client that lost its connection resumes the
stream at /v1/jobs/{id}/events (broker/queue/job_events.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from broker.errors import BrokerError, RequestTimeout
from broker.queue.jobs import Chunk, Failed, Final, Reply
from broker.queue.replies import AttemptRestarted, ReplyGap, Waiter
from broker.wire import json_encoder

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
# Once an `id:` line went out, a blank line after a comment makes the OpenAI SDK's decoder yield an
# empty event (it never resets the last id) and fail on it: keep-alives are then a bare comment line.
KEEPALIVE_AFTER_IDS = b": keep-alive\n"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def frame(events: list[bytes]) -> bytes:
    return b"".join(b"data: " + event + b"\n\n" for event in events)


def frame_with_ids(events: list[bytes], attempt: int, first_index: int) -> bytes:
    """Events with their `id: <attempt>.<index>` lines, which a client resumes from (broker/queue/job_events.py)."""
    return b"".join(b"id: %d.%d\ndata: %s\n\n" % (attempt, first_index + i, event)
                    for i, event in enumerate(events))


def frame_blocks(events: list[bytes]) -> bytes:
    return b"".join(events)


def frame_blocks_with_ids(events: list[bytes], attempt: int, first_index: int) -> bytes:
    """Whole event blocks (`event:` + `data:`, as the workers of the Anthropic and Responses dialects
    emit them) with their resume ids: an `id:` line may open a block, whose fields the SSE spec reads
    in any order."""
    return b"".join(b"id: %d.%d\n%s" % (attempt, first_index + i, event) for i, event in enumerate(events))


def error_event(err: BrokerError) -> bytes:
    return frame([json_encoder.encode(err.to_body())]) + DONE


class Dialect(NamedTuple):
    """How one inbound protocol writes a stream: events (as workers emit them) with their resume ids,
    its end, an error after the 200, and keep-alives (before and after the first `id:` line)."""

    frame_with_ids: Callable[[list[bytes], int, int], bytes]
    frame: Callable[[list[bytes]], bytes]  # without ids: a cached answer replayed
    done: bytes
    error_event: Callable[[BrokerError], bytes]
    keepalive: bytes
    keepalive_after_ids: bytes


OPENAI = Dialect(frame_with_ids, frame, DONE, error_event, KEEPALIVE, KEEPALIVE_AFTER_IDS)


async def first_reply(waiter: Waiter, *, hold_s: float, deadline: float, timeout_message: str) -> Reply | None:
    """The first reply if it comes within the hold; raise its error if it is a failure."""
    remaining = deadline - time.time()
    try:
        reply = await waiter.next(max(min(hold_s, remaining), 0))
    except ReplyGap as exc:
        raise exc.as_error() from None
    if isinstance(reply, Failed):
        raise BrokerError.from_info(reply.error)
    if reply is None and remaining <= hold_s:
        # The deadline, not the hold, ended the wait (compared up front: timers may fire early).
        raise RequestTimeout(timeout_message)
    return reply


class EventStream(StreamingResponse):
    """An SSE response that runs its close callbacks exactly once, however it ends.

    Not in the body generator's `finally`: a client that leaves before the first
    event means the generator is never started (so its `finally` never runs),
    and one that leaves while an event is being written leaves the generator
    suspended until garbage collection. `__call__` always returns or raises.
    The callbacks are plain functions: the request is being cancelled, so any
    Redis work they start must run in a task of its own (`BrokerState.spawn`).
    """

    def __init__(self, content: AsyncIterator[bytes]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=HEADERS)
        self.finished = False  # the job ended (answer, error or deadline); False: the client left first
        # The stream ended because its job restarted after a worker died (`AttemptRestarted`): the
        # client holds events of an attempt that no longer runs, so none can resume the new one.
        self.restarted = False
        # Its job's end freed its concurrency slots with its last reply (Final.freed, job_end.lua).
        self.freed = False
        self._on_close: list[Callable[[bool], None]] = []

    def on_close(self, callback: Callable[[bool], None]) -> None:
        """`callback(finished)` when the response is over."""
        self._on_close.append(callback)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            callbacks, self._on_close = self._on_close, []
            for callback in callbacks:
                callback(self.finished)


def stream_response(
    waiter: Waiter,
    first: Reply | None,
    *,
    dialect: Dialect = OPENAI,
    finalize: Callable[[bytes], Awaitable[bytes]] | None = None,
    keepalive_s: float,
    deadline: float,
    timeout_message: str,
) -> EventStream:
    async def events() -> AsyncIterator[bytes]:
        reply = first
        keepalive, attempt, index = dialect.keepalive, 0, 0
        # What goes out in one write: this reply's bytes and those of the replies that arrived with it
        # (under load a burst's chunks and the answer's end come in one read), one ASGI send and one
        # socket write for them all. Never held for one that has not arrived.
        out: list[bytes] = []
        while True:
            match reply:
                case None:
                    if time.time() >= deadline:
                        response.finished = True  # the worker drops the job itself once past its deadline
                        yield dialect.error_event(RequestTimeout(timeout_message))
                        return
                    out.append(keepalive)
                case Chunk(events=chunks):
                    if reply.attempt != attempt:  # a new attempt took over before anything was sent
                        attempt, index = reply.attempt, 0
                    out.append(dialect.frame_with_ids(chunks, attempt, index))
                    keepalive, index = dialect.keepalive_after_ids, index + len(chunks)
                case Final(body=body):
                    response.finished, response.freed = True, reply.freed
                    if body:  # a stream's last events, held back by the worker until its answer is kept
                        out.append(await finalize(body) if finalize is not None else body)
                    if dialect.done:
                        out.append(dialect.done)
                    if out:
                        yield b"".join(out)
                    return
                case Failed(error=info):
                    response.finished, response.freed = True, reply.freed
                    out.append(dialect.error_event(BrokerError.from_info(info)))
                    yield b"".join(out)
                    return
            try:
                reply = waiter.ready()
                if reply is None:
                    yield b"".join(out)
                    out = []
                    reply = await waiter.next(max(min(keepalive_s, deadline - time.time()), 0))
            except ReplyGap as exc:
                response.restarted = isinstance(exc, AttemptRestarted)
                out.append(dialect.error_event(exc.as_error()))
                yield b"".join(out)
                return

    response = EventStream(events())
    return response
