"""A light load generator for OpenAI-compatible `POST /chat/completions` endpoints.

The benchmark machine has two cores shared by the gateway, Redis, the fake upstream
and this client, so every cycle spent here is stolen from what is measured. Hence a
hand-written HTTP/1.1 client on asyncio streams instead of httpx or the openai SDK:
one pre-built request, one keep-alive connection per concurrent worker, and SSE
handled by counting `data:` events rather than decoding JSON.

    python -m bench.loadgen --base-url http://127.0.0.1:8000/v1 --key sk-x \\
        --model fake-model -c 64 -n 2000 [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import msgspec


class LoadStats(msgspec.Struct, kw_only=True):
    requests: int  # completed and valid
    errors: int
    elapsed_s: float
    throughput_rps: float
    latency_p50_ms: float
    latency_p99_ms: float
    ttft_p50_ms: float | None = None  # streams only: time to the first `data:` event
    ttft_p99_ms: float | None = None
    chunks_per_stream: float | None = None  # mean `data:` events before [DONE]
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


def build_request(base_url: str, api_key: str, model: str, prompt: str, stream: bool) -> bytes:
    url = urlsplit(base_url)
    body = msgspec.json.encode({"model": model, "stream": stream,
                                "messages": [{"role": "user", "content": prompt}]})
    head = (f"POST {url.path.rstrip('/')}/chat/completions HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\nAuthorization: Bearer {api_key}\r\n"
            f"Content-Type: application/json\r\nAccept: */*\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = raw[:-4].split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(b" ", 2)[1]), headers


async def _body_parts(reader: asyncio.StreamReader,
                      headers: dict[bytes, bytes]) -> AsyncIterator[bytes]:
    """Yields the body as it arrives: Content-Length, chunked, or until EOF."""
    if b"chunked" in headers.get(b"transfer-encoding", b""):
        while True:
            size = int((await reader.readline()).split(b";", 1)[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass  # trailers
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    elif (length := headers.get(b"content-length")) is not None:
        yield await reader.readexactly(int(length))
    else:
        yield await reader.read()


class _SSECounter:
    """Counts complete `data:` events; stops at `data: [DONE]`, flags `{"error"` events."""

    def __init__(self) -> None:
        self.buf = b""
        self.events = 0
        self.done = False
        self.error: bytes | None = None

    def feed(self, data: bytes) -> None:
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        self.buf += data
        while not self.done and (end := self.buf.find(b"\n\n")) >= 0:
            event, self.buf = self.buf[:end], self.buf[end + 2:]
            if event.startswith(b"data: [DONE]") or event.startswith(b"data:[DONE]"):
                self.done = True
            elif event.startswith(b"data:"):
                if event[5:].lstrip().startswith(b'{"error"'):
                    self.error = event
                self.events += 1
            # comments (": ping") and other fields are not chunks


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
               stream: bool) -> tuple[_Result, bool]:
    """One request on an open connection. Returns the result and whether to keep it."""
    start = time.perf_counter()
    writer.write(request)
    status, headers = await _read_head(reader)
    keep = headers.get(b"connection", b"").lower() != b"close"
    if status != 200 or not stream:
        body = b"".join([part async for part in _body_parts(reader, headers)])
        if status != 200:
            raise BadResponse(f"HTTP {status}: {body[:200]!r}")
        if b'"choices"' not in body:
            raise BadResponse(f"no choices: {body[:200]!r}")
        return _Result(time.perf_counter() - start), keep
    sse = _SSECounter()
    ttft = None
    async for part in _body_parts(reader, headers):
        sse.feed(part)
        if ttft is None and sse.events:
            ttft = time.perf_counter() - start
    if sse.error is not None:
        raise BadResponse(f"stream error: {sse.error[:200]!r}")
    if not sse.done:
        raise BadResponse(f"stream ended without [DONE] after {sse.events} events")
    return _Result(time.perf_counter() - start, ttft, sse.events), keep


async def run_load(base_url: str, api_key: str, model: str, *, concurrency: int, total: int,
                   stream: bool, prompt: str = "hello", duration_s: float | None = None,
                   timeout_s: float = 60.0) -> LoadStats:
    """Runs `total` requests (or until `duration_s` passes, whichever is first) over
    `concurrency` keep-alive connections and returns what was measured."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = build_request(base_url, api_key, model, prompt, stream)
    results: list[_Result] = []
    errors: list[str] = []
    remaining = total
    t0, cpu0 = time.perf_counter(), time.process_time()
    deadline = t0 + duration_s if duration_s else float("inf")

    async def worker() -> None:
        nonlocal remaining
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                result, keep = await asyncio.wait_for(_one(*conn, request, stream), timeout_s)
                results.append(result)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError, BadResponse, ValueError, IndexError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                keep = False
            if not keep and conn is not None:
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    latencies = [r.latency_s * 1000 for r in results]
    stats = LoadStats(
        requests=len(results), errors=len(errors), elapsed_s=elapsed,
        throughput_rps=len(results) / elapsed if elapsed else 0.0,
        latency_p50_ms=_percentile(latencies, 0.50), latency_p99_ms=_percentile(latencies, 0.99),
        client_cpu_s=time.process_time() - cpu0, error_samples=errors[:5])
    if stream:
        ttfts = [r.ttft_s * 1000 for r in results if r.ttft_s is not None]
        stats.ttft_p50_ms = _percentile(ttfts, 0.50)
        stats.ttft_p99_ms = _percentile(ttfts, 0.99)
        stats.chunks_per_stream = sum(r.chunks for r in results) / len(results) if results else 0
    return stats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="load an OpenAI-compatible chat endpoint")
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--key", default="sk-none")
    p.add_argument("--model", default="fake-model")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("-n", "--total", type=int, default=2000)
    p.add_argument("-d", "--duration-s", type=float, default=None)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--prompt", default="hello")
    p.add_argument("--warmup", type=int, default=0, help="requests run first and not counted")
    p.add_argument("--json", action="store_true", help="print LoadStats as JSON")
    args = p.parse_args(argv)

    async def go() -> LoadStats:
        if args.warmup:
            await run_load(args.base_url, args.key, args.model, concurrency=args.concurrency,
                           total=args.warmup, stream=args.stream, prompt=args.prompt)
        return await run_load(args.base_url, args.key, args.model,
                              concurrency=args.concurrency, total=args.total,
                              stream=args.stream, prompt=args.prompt,
                              duration_s=args.duration_s)

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
