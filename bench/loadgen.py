"""A light load generator for OpenAI-compatible `POST /chat/completions` endpoints, for
Anthropic's `POST /messages` (https://docs.anthropic.com/en/api/messages) with `--api messages`,
and for OpenAI's `POST /responses` (https://platform.openai.com/docs/api-reference/responses) with
`--api responses`.

The benchmark machine has two cores shared by the gateway, Redis, the fake upstream
and this client, so every cycle spent here is stolen from what is measured. Hence a
hand-written HTTP/1.1 client on a bare asyncio.Protocol instead of httpx or the
openai SDK: one pre-built request, one keep-alive connection per concurrent worker,
responses parsed in `data_received` (the worker wakes once per response, not once per
read), and SSE handled by counting `data:` events rather than decoding JSON.

Anthropic streams name every event (`event: content_block_delta` then its `data:`) and end with
`event: message_stop` rather than `[DONE]`
(https://docs.anthropic.com/en/docs/build-with-claude/streaming): there a chunk is a
`content_block_delta` event, the TTFT is the first of them, and the ping, start/stop and
message_delta events around them are not counted.

Responses streams name their events too (`event: response.output_text.delta`, then its `data:`;
https://platform.openai.com/docs/api-reference/responses-streaming) but end with `data: [DONE]`
as Chat does: there a chunk is a `response.output_text.delta` event, the TTFT is the first of
them, and `response.created`, `response.in_progress`, the item/part open and close events and
`response.completed` are not counted. A failure after the 200 is an `event: error`.

    python -m bench.loadgen --base-url http://127.0.0.1:8000/v1 --key sk-x \\
        --model fake-model -c 64 -n 2000 [--stream] [--api messages|responses]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Literal
from urllib.parse import urlsplit

import msgspec


class LoadStats(msgspec.Struct, kw_only=True):
    requests: int  # completed and valid
    errors: int
    elapsed_s: float
    throughput_rps: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_p999_ms: float = 0.0
    ttft_p50_ms: float | None = None  # streams only: time to the first chunk (below)
    ttft_p99_ms: float | None = None
    chunks_per_stream: float | None = None  # mean chunks: chat's `data:` events before [DONE], messages'
    # content_block_delta events, responses' response.output_text.delta events
    client_cpu_s: float = 0.0  # this process's CPU: what the load generator cost the box
    error_samples: list[str] = []

    def summary(self) -> str:
        line = (f"ok={self.requests} err={self.errors} {self.throughput_rps:.1f} req/s "
                f"p50={self.latency_p50_ms:.1f}ms p99={self.latency_p99_ms:.1f}ms")
        if self.ttft_p50_ms is not None:
            line += (f" ttft_p50={self.ttft_p50_ms:.1f}ms ttft_p99={self.ttft_p99_ms:.1f}ms"
                     f" chunks/stream={self.chunks_per_stream:.1f}")
        return line + f" client_cpu={self.client_cpu_s:.1f}s in {self.elapsed_s:.1f}s"


class BadResponse(Exception):
    pass


class _Result(msgspec.Struct):
    latency_s: float
    ttft_s: float | None = None
    chunks: int = 0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Api = Literal["chat", "messages", "responses"]
ANTHROPIC_VERSION = "2023-06-01"
# Messages requires max_tokens (Responses' max_output_tokens is optional, sent so both carry a cap, as
# clients usually do); ample for any fake's answer, so never the stop reason.
MAX_TOKENS = 1024


def build_request(base_url: str, api_key: str, model: str, prompt: str, stream: bool, api: Api = "chat") -> bytes:
    url = urlsplit(base_url)
    messages = [{"role": "user", "content": prompt}]
    if api == "messages":
        # As the Anthropic SDK sends it: key in x-api-key, the API version pinned by header.
        body = msgspec.json.encode({"model": model, "max_tokens": MAX_TOKENS, "stream": stream, "messages": messages})
        path, auth = "messages", f"x-api-key: {api_key}\r\nanthropic-version: {ANTHROPIC_VERSION}"
    elif api == "responses":
        # The prompt as a plain string `input`, the simplest form the API takes; no `store`, so the
        # response is stored as by default (https://platform.openai.com/docs/api-reference/responses/create),
        # and that write is part of what is measured.
        body = msgspec.json.encode({"model": model, "input": prompt, "max_output_tokens": MAX_TOKENS,
                                    "stream": stream})
        path, auth = "responses", f"Authorization: Bearer {api_key}"
    else:
        body = msgspec.json.encode({"model": model, "stream": stream, "messages": messages})
        path, auth = "chat/completions", f"Authorization: Bearer {api_key}"
    head = (f"POST {url.path.rstrip('/')}/{path} HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\n{auth}\r\n"
            f"Content-Type: application/json\r\nAccept: */*\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class _Dechunker:
    """Decodes `Transfer-Encoding: chunked` incrementally from whatever bytes arrived."""

    def __init__(self) -> None:
        self.buf = b""
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        buf = self.buf + data if self.buf else data
        pos, out = 0, []
        while True:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            size = int(buf[pos:nl].split(b";", 1)[0], 16)
            if size == 0:  # last chunk; the message ends at the blank line after trailers
                self.finished = buf.find(b"\r\n\r\n", nl) >= 0
                break
            if len(buf) < nl + size + 4:
                break
            out.append(buf[nl + 2:nl + 2 + size])
            pos = nl + size + 4
        self.buf = buf[pos:]
        return b"".join(out)


class _SSECounter:
    """Counts `data:` events by scanning for them rather than splitting events: a newline
    can't occur inside one-line JSON, so every line-start `data:` is an event. The tail
    of the previous piece is kept so a marker split across two reads is still seen."""

    _EVENT, _DONE, _ERROR = b"\ndata:", b"\ndata: [DONE]", b'\ndata: {"error"'
    _DONE_IS_EVENT = True  # [DONE] is a `data:` line too, but no chunk

    def __init__(self) -> None:
        self.tail = b"\n"  # the body starts at a line start
        self.events = 0  # including the [DONE] line until `done` is set
        self.done = False
        self.error: bytes | None = None
        self._keep = max(len(self._EVENT), len(self._DONE), len(self._ERROR)) - 1

    def feed(self, data: bytes) -> None:
        seen = self.tail + data
        self.events += seen.count(self._EVENT) - self.tail.count(self._EVENT)
        if self.error is None and (at := seen.find(self._ERROR)) >= 0:
            self.error = seen[at + 1:at + 200]
        if not self.done and self._DONE in seen:
            self.done = True
            self.events -= self._DONE_IS_EVENT
        self.tail = seen[-self._keep:]


class _MessagesSSECounter(_SSECounter):
    """The same scan over Anthropic's named events: a chunk is a `content_block_delta`, the
    stream ends at `message_stop`, and a failure after the 200 is an `event: error`
    (https://docs.anthropic.com/en/docs/build-with-claude/streaming)."""

    _EVENT, _DONE, _ERROR = b"\nevent: content_block_delta", b"\nevent: message_stop", b"\nevent: error"
    _DONE_IS_EVENT = False


class _ResponsesSSECounter(_SSECounter):
    """The same scan over the Responses API's named events: a chunk is a `response.output_text.delta`,
    the stream ends at `data: [DONE]` as Chat's does, and a failure after the 200 is an `event: error`
    (https://platform.openai.com/docs/api-reference/responses-streaming). The broker's `id:` lines
    open each block, so `event:` still starts a line."""

    _EVENT, _ERROR = b"\nevent: response.output_text.delta", b"\nevent: error"
    _DONE_IS_EVENT = False  # `data: [DONE]` is not an `event: response.output_text.delta` line


_COUNTERS: dict[str, type[_SSECounter]] = {"chat": _SSECounter, "messages": _MessagesSSECounter,
                                           "responses": _ResponsesSSECounter}
_NON_STREAM_MARK = {"chat": b'"choices"', "messages": b'"content"', "responses": b'"output"'}  # ChatCompletion,
# Message, Response: a key each must have


class _Exchange:
    """One response, parsed as bytes arrive in `data_received`. The waiting worker is
    woken once, when `done` resolves, instead of once per socket read."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: bool, api: Api = "chat") -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self.start = time.perf_counter()
        self.stream = stream
        self.api = api
        self.head = b""
        self.status = 0
        self.keep_alive = True
        self.remaining: int | None = None  # Content-Length still to come
        self.dechunker: _Dechunker | None = None
        self.body: list[bytes] = []
        self.sse: _SSECounter | None = None
        self.ttft_s: float | None = None
        self.first_byte_s: float | None = None  # since `start`: the per-hop timeline's "answer began"
        self.headers: dict[bytes, bytes] = {}  # lower-cased names and values (Retry-After, x-llm-broker-*)

    def feed(self, data: bytes) -> None:
        if self.first_byte_s is None:
            self.first_byte_s = time.perf_counter() - self.start
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = self.head[end + 4:]
            self._parse_head(self.head[:end])
        if self.dechunker is not None:
            data = self.dechunker.feed(data)
            finished = self.dechunker.finished
        elif self.remaining is not None:
            data = data[:self.remaining]
            self.remaining -= len(data)
            finished = self.remaining == 0
        else:
            finished = False  # body runs until the server closes
        if self.sse is not None:
            self.sse.feed(data)
            if self.ttft_s is None and self.sse.events:
                self.ttft_s = time.perf_counter() - self.start
        elif data:
            self.body.append(data)
        if finished and not self.done.done():
            self.done.set_result(None)

    def _parse_head(self, head: bytes) -> None:
        status_line, *lines = head.split(b"\r\n")
        self.status = int(status_line.split(b" ", 2)[1])
        for line in lines:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            self.headers[name] = value
            if name == b"content-length":
                self.remaining = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                self.dechunker = _Dechunker()
            elif name == b"connection" and value == b"close":
                self.keep_alive = False
        if self.stream and self.status == 200:
            self.sse = _COUNTERS[self.api]()

    def result(self) -> _Result:
        latency_s = time.perf_counter() - self.start
        body = b"".join(self.body)
        if self.status != 200:
            raise BadResponse(f"HTTP {self.status}: {body[:200]!r}")
        if self.sse is None:
            expected = _NON_STREAM_MARK[self.api]
            if expected not in body:
                raise BadResponse(f"no {expected.decode()}: {body[:200]!r}")
            return _Result(latency_s)
        if self.sse.error is not None:
            raise BadResponse(f"stream error: {self.sse.error!r}")
        if not self.sse.done:
            end = "message_stop" if self.api == "messages" else "[DONE]"
            raise BadResponse(f"stream ended without {end} after {self.sse.events} events")
        return _Result(latency_s, self.ttft_s, self.sse.events)


class _Connection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection carrying one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.exchange is not None:
            self.exchange.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.exchange
        if ex is None or ex.done.done():
            return
        if ex.status and ex.remaining is None and ex.dechunker is None:
            ex.done.set_result(None)  # a body delimited by the close itself
        else:
            ex.done.set_exception(ConnectionResetError("connection closed mid-response"))

    async def send(self, request: bytes, stream: bool, timeout_s: float, api: Api = "chat") -> _Result:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.exchange = ex = _Exchange(loop, stream, api)
        transport = self.transport

        def expire() -> None:
            if not ex.done.done():
                ex.done.set_exception(TimeoutError(f"no full response within {timeout_s}s"))
            transport.abort()

        timer = loop.call_later(timeout_s, expire)
        try:
            self.transport.write(request)
            await ex.done
        finally:
            timer.cancel()
        return ex.result()


async def run_load(base_url: str, api_key: str, model: str, *, concurrency: int, total: int,
                   stream: bool, prompt: str = "hello", duration_s: float | None = None,
                   timeout_s: float = 60.0, api: Api = "chat") -> LoadStats:
    """Runs `total` requests (or until `duration_s` passes, whichever is first) over
    `concurrency` keep-alive connections and returns what was measured. `api` picks the
    endpoint under `base_url`: "chat" (/chat/completions), "messages" (Anthropic's /messages) or
    "responses" (OpenAI's /responses)."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = build_request(base_url, api_key, model, prompt, stream, api)
    results: list[_Result] = []
    errors: list[str] = []
    remaining = total
    t0, cpu0 = time.perf_counter(), time.process_time()
    deadline = t0 + duration_s if duration_s else float("inf")

    async def worker() -> None:
        nonlocal remaining
        conn: _Connection | None = None
        loop = asyncio.get_running_loop()
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            try:
                if conn is None or conn.closed:
                    _, conn = await loop.create_connection(_Connection, host, port)
                results.append(await conn.send(request, stream, timeout_s, api))
                if conn.exchange and not conn.exchange.keep_alive:
                    conn.transport.close()  # type: ignore[union-attr]
                    conn = None
            except (OSError, BadResponse, ValueError, IndexError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                if conn is not None and conn.transport is not None:
                    conn.transport.close()  # its state is unknown: never reuse it
                conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    latencies = [r.latency_s * 1000 for r in results]
    stats = LoadStats(
        requests=len(results), errors=len(errors), elapsed_s=elapsed,
        throughput_rps=len(results) / elapsed if elapsed else 0.0,
        latency_p50_ms=_percentile(latencies, 0.50), latency_p99_ms=_percentile(latencies, 0.99),
        latency_p999_ms=_percentile(latencies, 0.999),
        client_cpu_s=time.process_time() - cpu0, error_samples=errors[:5])
    if stream:
        ttfts = [r.ttft_s * 1000 for r in results if r.ttft_s is not None]
        stats.ttft_p50_ms = _percentile(ttfts, 0.50)
        stats.ttft_p99_ms = _percentile(ttfts, 0.99)
        stats.chunks_per_stream = sum(r.chunks for r in results) / len(results) if results else 0
    return stats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="load an OpenAI-compatible chat endpoint, Anthropic's /messages "
                                            "or OpenAI's /responses")
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--key", default="sk-none")
    p.add_argument("--model", default="fake-model")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("-n", "--total", type=int, default=2000)
    p.add_argument("-d", "--duration-s", type=float, default=None)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--api", choices=("chat", "messages", "responses"), default="chat",
                   help="chat: POST {base-url}/chat/completions; messages: POST {base-url}/messages, "
                        "Anthropic-style; responses: POST {base-url}/responses")
    p.add_argument("--prompt", default="hello")
    p.add_argument("--timeout-s", type=float, default=60.0, help="per request")
    p.add_argument("--warmup", type=int, default=0, help="requests run first and not counted")
    p.add_argument("--json", action="store_true", help="print LoadStats as JSON")
    args = p.parse_args(argv)

    async def go() -> LoadStats:
        if args.warmup:
            await run_load(args.base_url, args.key, args.model, concurrency=args.concurrency,
                           total=args.warmup, stream=args.stream, prompt=args.prompt, api=args.api)
        return await run_load(args.base_url, args.key, args.model,
                              concurrency=args.concurrency, total=args.total,
                              stream=args.stream, prompt=args.prompt,
                              duration_s=args.duration_s, timeout_s=args.timeout_s, api=args.api)

    try:
        import uvloop  # cheaper event loop: the client must stay out of the measurement
        stats = uvloop.run(go())
    except ImportError:
        stats = asyncio.run(go())
    print(msgspec.json.encode(stats).decode() if args.json else stats.summary())
    for sample in stats.error_samples:
        print("  error:", sample)


if __name__ == "__main__":
    main()
