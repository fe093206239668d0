"""Circuit breakers shared through Redis: open after K failures in a row, one probe when half-open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response

from tests.fakes.openai_upstream import UpstreamServer, create_app, error_response
from tests.harness import TEST_KEY
from tests.stacks import StackFactory

OPEN_S = 2.0


class Switchable(UpstreamServer):
    """The OpenAI fake, answering 503 to every call while `failing`; counts calls per upstream model."""

    def __init__(self) -> None:
        app = create_app(chunks=3)
        self.failing = True
        self.delay_s = 0.0
        self.calls: dict[str, int] = {}

        async def gate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            model = (await request.json()).get("model", "")
            self.calls[model] = self.calls.get(model, 0) + 1
            await asyncio.sleep(self.delay_s)
            if model == "alternating" and self.calls[model] % 2:  # calls 1, 3, 5...: never K in a row
                return error_response(500, "The server had an error while processing your request.",
                                      "server_error")
            if self.failing and model != "alternating":
                return error_response(503, "The engine is currently overloaded, please try again later.",
                                      "service_unavailable_error", code="server_is_overloaded")
            return await call_next(request)

        app.add_middleware(BaseHTTPMiddleware, dispatch=gate)
        super().__init__(app)


@pytest.fixture(scope="module")
def primary() -> Iterator[Switchable]:
    with Switchable() as server:
        yield server


@pytest.fixture(scope="module")
def backup() -> Iterator[UpstreamServer]:
    with UpstreamServer(chunks=3) as server:
        yield server


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory, primary: Switchable, backup: UpstreamServer) -> str:
    stack = module_stack_factory(
        {"primary": {"kind": "openai", "base_url": primary.base_url, "max_retries": 0},
         "backup": {"kind": "openai", "base_url": backup.base_url}},
        {"guarded": [{"provider": "primary", "model": "guarded"}, {"provider": "backup", "model": "fake-model"}],
         "alone": [{"provider": "primary", "model": "alone"}],
         "alternating": [{"provider": "primary", "model": "alternating"},
                         {"provider": "backup", "model": "fake-model"}]},
        circuit={"failures": 3, "open_s": OPEN_S, "failure_ratio": 0.5, "min_calls": 6},
    )
    return str(stack.up("primary", "primary", "backup"))  # two processes for primary: the circuit is one for both


def ask(client: openai.OpenAI, model: str) -> str:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}])
    raw.parse()
    return raw.headers["x-llm-broker-deployment"]


def test_the_circuit_opens_after_k_failures_then_lets_one_probe_through(
    client: openai.OpenAI, primary: Switchable
) -> None:
    # Three failures in a row (whichever worker process saw them) open it: served by the backup meanwhile.
    assert [ask(client, "guarded") for _ in range(3)] == ["backup/fake-model"] * 3
    assert primary.calls["guarded"] == 3
    opened = time.monotonic()
    assert [ask(client, "guarded") for _ in range(5)] == ["backup/fake-model"] * 5
    assert primary.calls["guarded"] == 3  # open: nobody calls it any more

    # Half-open after OPEN_S: one probe, which fails and reopens the circuit at once.
    time.sleep(max(0.0, OPEN_S + 0.1 - (time.monotonic() - opened)))
    assert [ask(client, "guarded") for _ in range(3)] == ["backup/fake-model"] * 3
    assert primary.calls["guarded"] == 4

    # Recovered: after OPEN_S again, of three requests at once only one probes (slowly, so the other two
    # arrive while it is in flight); its success closes the circuit.
    primary.failing, primary.delay_s = False, 0.5
    time.sleep(OPEN_S + 0.1)
    with ThreadPoolExecutor(3) as pool:
        served = list(pool.map(lambda _: ask(client, "guarded"), range(3)))
    assert sorted(served) == ["backup/fake-model", "backup/fake-model", "primary/guarded"]
    assert primary.calls["guarded"] == 5
    primary.delay_s = 0.0
    assert [ask(client, "guarded") for _ in range(3)] == ["primary/guarded"] * 3
    assert primary.calls["guarded"] == 8


def test_with_every_candidate_open_the_answer_is_an_immediate_503_with_retry_after(
    base_url: str, primary: Switchable
) -> None:
    primary.failing = True
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    body = {"model": "alone", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):
        assert httpx.post(f"{base_url}/chat/completions", json=body, headers=headers).status_code == 503
    assert primary.calls["alone"] == 3
    started = time.monotonic()
    refused = httpx.post(f"{base_url}/chat/completions", json=body, headers=headers)
    assert time.monotonic() - started < 0.5
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "circuit_open", refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= OPEN_S
    assert primary.calls["alone"] == 3  # never queued, never called


def test_a_deployment_failing_every_other_call_opens_by_its_failure_ratio(
    client: openai.OpenAI, primary: Switchable
) -> None:
    # Never 3 failures in a row, but half of its calls fail: the 7th call (4 failed of 7, over the
    # 6-call minimum) opens the circuit, and the remaining requests go straight to the backup.
    served = [ask(client, "alternating") for _ in range(12)]
    assert primary.calls["alternating"] == 7
    assert served[7:] == ["backup/fake-model"] * 5
