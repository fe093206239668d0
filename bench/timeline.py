"""One request at c=1, hop by hop, as far as it can be seen from outside the broker.

The client sees three instants (sent, first byte, last byte; for a stream also the first chunk),
for the broker and for the same request sent to the upstream directly: medians over `samples`
requests on a warm keep-alive connection. The broker's answer headers say who served it
(`x-llm-broker-*`), not when; the hops inside come from Redis: on the benchmark's own Redis, a
MONITOR connection timestamps (µs, Redis's wall clock, as the client's `time.time()`) every command
the API and the worker ran for one more request, so the queue hand-off (the API's writes, the
worker's read and ack, the reply's PUBLISH) shows against the client's send. MONITOR slows Redis a
little, so that one request is a picture, not a figure.
"""

from __future__ import annotations

import asyncio
import shlex
import socket
import statistics
import threading
import time
from urllib.parse import urlsplit

from bench.loadgen import _Connection, _Exchange, _Result, build_request


async def _exchanges(base_url: str, key: str, model: str, stream: bool, samples: int, warm: int = 10,
                     before_send: list[float] | None = None) -> list[tuple[_Exchange, _Result]]:
    url = urlsplit(base_url)
    request = build_request(base_url, key, model, "hello", stream)
    _, conn = await asyncio.get_running_loop().create_connection(_Connection, url.hostname or "127.0.0.1",
                                                                      url.port or 80)
    out = []
    try:
        for _ in range(warm):  # the connection, caches, the broker's first-use paths
            await conn.send(request, stream, 30)
        for _ in range(samples):
            if before_send is not None:
                before_send.append(time.time())
            result = await conn.send(request, stream, 30)  # its latency_s: at the last byte
            assert conn.exchange is not None
            out.append((conn.exchange, result))
    finally:
        assert conn.transport is not None
        conn.transport.close()
    return out


def _medians(exchanges: list[tuple[_Exchange, _Result]]) -> str:
    first = statistics.median(e.first_byte_s or 0 for e, _ in exchanges) * 1000
    last = statistics.median(r.latency_s for _, r in exchanges) * 1000
    line = f"first byte {first:6.2f} ms"
    if exchanges[0][1].ttft_s is not None:
        line += f", first chunk {statistics.median(r.ttft_s or 0 for _, r in exchanges) * 1000:6.2f} ms"
    return line + f", last byte {last:6.2f} ms"


def monitor(redis_url: str, ready: threading.Event, stop: threading.Event, raw: list[bytes]) -> None:
    url = urlsplit(redis_url)
    with socket.create_connection((url.hostname, url.port or 6379)) as sock:
        sock.sendall(b"MONITOR\r\n")
        sock.settimeout(0.05)
        ready.set()
        while not stop.is_set():
            try:
                raw.append(sock.recv(1 << 16))
            except TimeoutError:
                continue


def _redis_hops(raw: bytes, sent_at: float, until_s: float) -> list[str]:
    """One line per command a client sent; the commands a Lua script ran fold into its line."""
    lines: list[str] = []
    inside: list[str] = []

    def fold() -> None:
        if inside and lines:
            lines[-1] += f"  [{len(inside)} inside: {' '.join(dict.fromkeys(inside))}]"
        inside.clear()

    for line in raw.decode(errors="replace").split("\r\n"):
        if not line.startswith("+") or " [" not in line:
            continue
        stamp, _, rest = line[1:].partition(" [")
        client, _, command = rest.partition("] ")
        offset_ms = (float(stamp) - sent_at) * 1000
        if not 0 <= offset_ms <= until_s * 1000:
            continue  # idle polling and heartbeats before the send or after the answer
        words = shlex.split(command)
        if client.endswith("lua"):
            inside.append(words[0].upper())
            continue
        fold()
        shown = " ".join(w if len(w) <= 40 else w[:37] + "..." for w in words[:2])
        lines.append(f"    {offset_ms:+8.3f} ms  port {client.split(':')[-1]:>5}  {shown}")
    fold()
    return lines


def timeline(broker_url: str, direct_url: str, key: str, direct_key: str, model: str,
             redis_url: str | None, samples: int = 50) -> list[str]:
    async def run() -> list[str]:
        out = ["per-hop timeline, one request at c=1 (medians of %d; ms from the client's send)" % samples]
        for stream in (False, True):
            mode = "stream" if stream else "non-stream"
            for name, url, k in (("upstream direct", direct_url, direct_key), ("llm-broker", broker_url, key)):
                exchanges = await _exchanges(url, k, model, stream, samples)
                out.append(f"  {mode:<10} {name:<16} {_medians(exchanges)}")
        probe = await _exchanges(broker_url, key, model, False, 1)
        served = {k.decode(): v.decode() for k, v in probe[0][0].headers.items() if k.startswith(b"x-llm-broker")}
        out.append("  the broker's answer headers: "
                   + (", ".join(f"{k}: {v}" for k, v in served.items()) or "none")
                   + " (none carries queue wait or upstream time)")
        if redis_url is None:
            out.append("  Redis hops: n/a (shared Redis: MONITOR would show other users' commands)")
            return out
        ready, stop, raw = threading.Event(), threading.Event(), []  # type: ignore[var-annotated]
        reader = threading.Thread(target=monitor, args=(redis_url, ready, stop, raw), daemon=True)
        reader.start()
        ready.wait(5)
        await asyncio.sleep(0.05)
        sent: list[float] = []
        one, _ = (await _exchanges(broker_url, key, model, False, 1, warm=0, before_send=sent))[0]
        took_s = time.time() - sent[-1]
        await asyncio.sleep(0.05)
        stop.set()
        reader.join(2)
        out.append(f"  Redis commands for one non-stream request (MONITOR on; answer's first byte at "
                   f"{(one.first_byte_s or 0) * 1000:.3f} ms; offset, client port, command):")
        out += _redis_hops(b"".join(raw), sent[-1], took_s)
        return out

    return asyncio.run(run())
