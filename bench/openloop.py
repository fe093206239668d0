"""Open-loop load: requests start on a fixed schedule whatever happened to earlier ones.

A closed loop (bench/loadgen.py's `run_load`) sends the next request only when one returns, so a
slow server slows its own load and its tail hides (coordinated omission). Here arrivals are
spaced 1/rate apart and each latency is taken from the arrival's *scheduled* time, so a request
the client could not send on time still counts its wait.

`run_open_loop` reuses idle keep-alive connections and opens one more when none is idle; it has no
concurrency cap, only `max_in_flight`, past which an arrival is counted as dropped instead of sent
(a bound on the client's own memory and file descriptors, reported, never hidden).

`open_streams` is the burst test: every stream on a connection of its own, opened on schedule,
with one `StreamOutcome` each (served, refused with or without Retry-After, reset, connect
timeout, never answered).
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import msgspec

from bench.loadgen import Api, BadResponse, _Connection, _Exchange, _percentile, build_request


class OpenLoopStats(msgspec.Struct, kw_only=True):
    rate_rps: float  # offered
    sent: int
    requests: int  # completed and valid
    errors: int
    dropped: int  # arrivals not sent: max_in_flight were already out
    elapsed_s: float
    latency_p50_ms: float  # from the scheduled arrival to the last byte
    latency_p99_ms: float
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    error_samples: list[str] = []

    def summary(self) -> str:
        line = (f"offered {self.rate_rps:.0f} req/s: ok={self.requests} err={self.errors} dropped={self.dropped} "
                f"p50={self.latency_p50_ms:.1f}ms p99={self.latency_p99_ms:.1f}ms")
        if self.ttft_p50_ms is not None:
            line += f" ttft_p50={self.ttft_p50_ms:.1f}ms ttft_p99={self.ttft_p99_ms:.1f}ms"
        return line + f" in {self.elapsed_s:.1f}s"


async def run_open_loop(base_url: str, api_key: str, model: str, *, rate: float, duration_s: float | None = None,
                        total: int | None = None, stream: bool = False, prompt: str = "hello", api: Api = "chat",
                        max_in_flight: int = 2000, timeout_s: float = 60.0) -> OpenLoopStats:
    """`rate` arrivals a second for `duration_s` (or `total` arrivals, whichever is given)."""
    count = total if total is not None else int(rate * (duration_s or 0))
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = build_request(base_url, api_key, model, prompt, stream, api)
    loop = asyncio.get_running_loop()
    idle: list[_Connection] = []
    latencies: list[float] = []
    ttfts: list[float] = []
    errors: list[str] = []
    in_flight = dropped = 0

    async def one(scheduled: float) -> None:
        nonlocal in_flight
        conn = None
        try:
            while idle and conn is None:
                conn = idle.pop()
                conn = None if conn.closed else conn
            if conn is None:
                _, conn = await loop.create_connection(_Connection, host, port)
            result = await conn.send(request, stream, timeout_s, api)
            latencies.append((time.perf_counter() - scheduled) * 1000)
            if result.ttft_s is not None:  # the exchange began at the send, later than scheduled if a connect came first
                ttfts.append((conn.exchange.start + result.ttft_s - scheduled) * 1000)  # type: ignore[union-attr]
            if conn.exchange is not None and conn.exchange.keep_alive:
                idle.append(conn)
            else:
                conn.transport.close()  # type: ignore[union-attr]
        except (OSError, BadResponse, ValueError, IndexError) as e:
            errors.append(f"{type(e).__name__}: {e}")
            if conn is not None and conn.transport is not None:
                conn.transport.close()  # its state is unknown: never reuse it
        finally:
            in_flight -= 1

    t0 = time.perf_counter()
    tasks = []
    for i in range(count):
        scheduled = t0 + i / rate
        if (wait := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        if in_flight >= max_in_flight:
            dropped += 1
            continue
        in_flight += 1
        tasks.append(asyncio.ensure_future(one(scheduled)))
    await asyncio.gather(*tasks)
    for conn in idle:
        if conn.transport is not None:
            conn.transport.close()
    return OpenLoopStats(
        rate_rps=rate, sent=len(tasks), requests=len(latencies), errors=len(errors), dropped=dropped,
        elapsed_s=time.perf_counter() - t0,
        latency_p50_ms=_percentile(latencies, 0.50), latency_p99_ms=_percentile(latencies, 0.99),
        ttft_p50_ms=_percentile(ttfts, 0.50) if stream else None,
        ttft_p99_ms=_percentile(ttfts, 0.99) if stream else None, error_samples=errors[:5])


class StreamOutcome(msgspec.Struct, kw_only=True):
    status: int = 0  # 0: no status line came
    retry_after: bool = False
    completed: bool = False  # a 200 whose stream reached its end marker with no error event
    reset: bool = False  # the connection was reset or refused
    connect_timeout: bool = False
    unanswered: bool = False  # connected, but no full answer within the timeout
    other_error: str = ""


class BurstStats(msgspec.Struct, kw_only=True):
    offered: int
    served: int  # 200 and the stream completed
    refused: int  # 429 or 503 with Retry-After: an honest "not now"
    other: int  # any other answer, a refusal without Retry-After, a 200 stream that broke
    resets: int
    connect_timeouts: int
    unanswered: int
    elapsed_s: float
    samples: list[str] = []

    @property
    def passed(self) -> bool:
        return self.served + self.refused == self.offered and self.resets == 0

    def summary(self) -> str:
        return (f"{self.offered} streams: served {self.served}, refused with Retry-After {self.refused}, "
                f"other answers {self.other}, resets {self.resets}, connect timeouts {self.connect_timeouts}, "
                f"never answered {self.unanswered} in {self.elapsed_s:.1f}s")

    @classmethod
    def of(cls, outcomes: list[StreamOutcome], elapsed_s: float) -> BurstStats:
        served = sum(o.completed for o in outcomes)
        refused = sum(o.status in (429, 503) and o.retry_after for o in outcomes)
        resets = sum(o.reset for o in outcomes)
        timeouts = sum(o.connect_timeout for o in outcomes)
        unanswered = sum(o.unanswered for o in outcomes)
        samples = sorted({o.other_error or f"HTTP {o.status}" for o in outcomes
                          if not o.completed and not o.reset and not o.connect_timeout and not o.unanswered
                          and not (o.status in (429, 503) and o.retry_after)})[:5]
        return cls(offered=len(outcomes), served=served, refused=refused, resets=resets, connect_timeouts=timeouts,
                   unanswered=unanswered, other=len(outcomes) - served - refused - resets - timeouts - unanswered,
                   elapsed_s=elapsed_s, samples=samples)


async def open_streams(base_url: str, api_key: str, model: str, *, count: int, rate: float,
                       connect_timeout_s: float = 5.0, timeout_s: float = 60.0, prompt: str = "hello",
                       live: list[_Exchange] | None = None) -> list[StreamOutcome]:
    """`count` chat streams, `rate` a second, each on a new connection. `live`, when given, gets each
    exchange as it is sent, so a caller can look at streams while they are open (chunks so far)."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = build_request(base_url, api_key, model, prompt, True)
    loop = asyncio.get_running_loop()

    async def one() -> StreamOutcome:
        outcome = StreamOutcome()
        conn = None
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(_Connection, host, port), connect_timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            outcome.connect_timeout = True
            return outcome
        except ConnectionError:
            outcome.reset = True
            return outcome
        except OSError as e:
            outcome.other_error = f"connect: {type(e).__name__}: {e}"
            return outcome
        sending = asyncio.ensure_future(conn.send(request, True, timeout_s))
        await asyncio.sleep(0)  # send() has made the exchange
        if live is not None and conn.exchange is not None:
            live.append(conn.exchange)
        try:
            await sending
            outcome.completed = True
        except (TimeoutError, asyncio.TimeoutError):
            outcome.unanswered = True
        except ConnectionError:
            outcome.reset = True
        except (BadResponse, OSError, ValueError, IndexError) as e:
            outcome.other_error = f"{type(e).__name__}: {e}"[:120]
        finally:
            if conn.transport is not None:
                conn.transport.close()
        if conn.exchange is not None:
            outcome.status = conn.exchange.status
            outcome.retry_after = b"retry-after" in conn.exchange.headers
        return outcome

    t0 = time.perf_counter()
    tasks = []
    for i in range(count):
        if (wait := t0 + i / rate - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(one()))
    return list(await asyncio.gather(*tasks))
