"""While a streamed job waits, the client sees SSE comments (invisible to the SDK), then the answer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from tests.harness import TEST_KEY
from tests.stacks import StackFactory


def test_waiting_stream_gets_keepalive_comments_then_the_answer(stack_factory: StackFactory) -> None:
    stack = stack_factory(
        {"mock": {"kind": "mock", "tokens": 3, "first_token_delay_s": 1.2}},
        {"m": [{"provider": "mock", "model": "m"}]},
        server={"stream_first_byte_hold_s": 0.1, "keepalive_interval_s": 0.2},
    )
    base_url = stack.up("mock")
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "wait for it"}]}
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    with ThreadPoolExecutor(1) as pool:  # the SDK's stream waits alongside the raw one
        sdk = pool.submit(lambda: list(client.chat.completions.create(**body)))
        with httpx.stream("POST", f"{base_url}/chat/completions", json=body,
                          headers={"authorization": f"Bearer {TEST_KEY}"}) as resp:
            assert resp.status_code == 200
            text = resp.read().decode()
        chunks = sdk.result()
    before_data = text[: text.index("id: 1.0\ndata: ")]
    assert before_data.count(": keep-alive\n\n") >= 3  # ~1.2 s of waiting at 0.2 s intervals
    assert before_data.replace(": keep-alive\n\n", "") == ""
    assert text.endswith("data: [DONE]\n\n")

    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_tiny_sdk_read_timeout_cannot_make_keepalives_a_busy_loop(stack_factory: StackFactory) -> None:
    # Keep-alives follow half the SDK's read timeout; a client-sent microsecond is floored at 1 s.
    stack = stack_factory({"mock": {"kind": "mock", "tokens": 2, "first_token_delay_s": 2.0}},
                          {"m": [{"provider": "mock", "model": "m"}]})
    base_url = stack.up("mock")
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "slow start"}]}
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=10,
                      headers={"authorization": f"Bearer {TEST_KEY}", "x-stainless-read-timeout": "0.000001"}) as resp:
        assert resp.status_code == 200
        text = resp.read().decode()
    assert text.endswith("data: [DONE]\n\n")
    assert 1 <= text.count(": keep-alive\n\n") <= 5  # every 0.5 s over a 2 s wait
