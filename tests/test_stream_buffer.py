"""A client that reads slower than its stream is produced cannot grow the API's memory without limit."""

from __future__ import annotations

import json
import socket
import time

import httpx
import redis

from broker.keys import Keys
from tests.harness import REDIS_URL, TEST_KEY
from tests.stacks import StackFactory

BUFFER_BYTES = 65536


def test_a_reader_that_never_reads_gets_its_stream_ended_and_its_job_cancelled(stack_factory: StackFactory,
                                                                             namespace: str) -> None:
    # ~100,000 one-word chunks (~17 MB of SSE), a token every ~0.1 ms: far more than the kernel's socket
    # buffers and uvicorn's write buffer absorb, so the rest would pile up in the API.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 100_000, "token_delay_s": 0.0001}},
                          {"m": [{"provider": "mock", "model": "m"}]},
                          server={"stream_buffer_bytes": BUFFER_BYTES})
    base_url = stack.up("mock")
    port = httpx.URL(base_url).port
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "flood me"}]})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window: backpressure comes early
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TEST_KEY}\r\n"
                 f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n{body}".encode())

    client = redis.Redis.from_url(REDIS_URL)
    cancelled = Keys(namespace).cancelled("mock", "*")
    end = time.monotonic() + 20
    while not list(client.scan_iter(match=cancelled)):  # the API gave up on the reader and cancelled the job
        assert time.monotonic() < end, "the job was never cancelled"
        time.sleep(0.05)

    received = bytearray()
    sock.settimeout(20)
    while not received.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of the chunked body
        data = sock.recv(1 << 20)
        assert data, f"the stream ended without its last chunk: {bytes(received[-300:])!r}"
        received += data
    sock.close()
    assert len(received) < 10_000_000  # cut short: far less than the whole answer
    tail = received[-2000:].decode(errors="replace")
    assert tail.endswith("data: [DONE]\n\n\r\n0\r\n\r\n")
    error_line = tail[tail.rindex('data: {"error"'):].split("\n", 1)[0]
    error = json.loads(error_line.removeprefix("data: "))["error"]
    assert error["code"] == "client_too_slow"
    assert error["type"] == "invalid_request_error" and f"{BUFFER_BYTES:,} bytes" in error["message"]
