"""The door: an API process refuses what it cannot hold, before it spends anything on it.

Past `server.max_in_flight` requests in flight (a stream is in flight until it ends or its client
leaves), past `server.max_new_per_s` new requests a second, or while the process's event loop lags
past `server.shed_lag_ms` (api/loop_lag.py), a request is answered 503 with
`Retry-After` in its protocol's error shape (OpenAI's `server_overloaded`; Anthropic's 529
`overloaded_error` on /v1/messages, api/anthropic.py) before its body is read, its key checked or
Redis touched: tens of microseconds. Without a door, a burst is not refused but drowned: at 500
new streams a second one process spent its event loop on stream set-up and relay, stopped
accepting in time, the kernel's accept queue (uvicorn's `backlog`) overflowed and clients saw
connection resets and connect timeouts instead of an answer (issue 22).

Health, readiness, metrics, the status page, the console and the admin API are never refused: an operator
must still see and steer an overloaded process. A pure ASGI middleware placed outermost, not
Starlette's BaseHTTPMiddleware (a task and a memory stream per request); its hot path is an
increment, a comparison, a bool read and a decrement. The count falls when the app call returns, which for a
stream is when its last byte is sent or its client has disconnected (Starlette's
StreamingResponse returns on `http.disconnect`), whatever the response.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.loop_lag import LoopLag
from broker.errors import Overloaded
from broker.ops import metrics

# Never refused: what an operator needs to see and steer an overloaded process.
NEVER_SHED = frozenset({"/healthz", "/readyz", "/metrics", "/status", "/status/data"})
NEVER_SHED_PREFIX = ("/admin/", "/console")
# Unknown when a stream will free a slot: one second is the SDKs' own first back-off (openai-python
# `INITIAL_RETRY_DELAY` 0.5 s, doubled), so a refused client comes back about when it would anyway.
IN_FLIGHT_RETRY_S = 1.0

Refuse = Callable[[Scope, Overloaded], Response]


class Door:
    def __init__(self, app: ASGIApp, *, max_in_flight: int, max_new_per_s: float, lag: LoopLag,
                 refuse: Refuse) -> None:
        self.app = app
        self.lag = lag
        self.max_in_flight = max_in_flight or 2**62  # 0: no cap, checked as one that is never reached
        self.max_new_per_s = max_new_per_s
        self.refuse = refuse
        self.in_flight = 0
        # Token bucket: up to one second's worth of new requests at once, refilled at the rate.
        self._tokens = max_new_per_s
        self._refilled = time.monotonic()
        self._shed_in_flight = metrics.SHED.labels("in_flight")
        self._shed_rate = metrics.SHED.labels("rate")
        self._shed_lag = metrics.SHED.labels("lag")
        _InFlight.door = self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        try:
            if self.in_flight > self.max_in_flight and not _never_shed(scope["path"]):
                self._shed_in_flight.inc()
                await self.refuse(scope, Overloaded.in_flight(IN_FLIGHT_RETRY_S))(scope, receive, send)
                return
            if self.max_new_per_s and not self._take_token() and not _never_shed(scope["path"]):
                self._shed_rate.inc()
                await self.refuse(scope, Overloaded.rate((1 - self._tokens) / self.max_new_per_s))(
                    scope, receive, send)
                return
            if self.lag.shedding and not _never_shed(scope["path"]):
                self._shed_lag.inc()
                await self.refuse(scope, Overloaded.lag(self.lag.retry_after_s()))(scope, receive, send)
                return
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.max_new_per_s, self._tokens + (now - self._refilled) * self.max_new_per_s)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def _never_shed(path: str) -> bool:
    return path in NEVER_SHED or path.startswith(NEVER_SHED_PREFIX)


class _InFlight(Collector):
    """`llm_broker_api_in_flight`, read from the door's counter at scrape time, so counting costs no
    metric update per request. Only without `--workers N`: prometheus-client's multiprocess mode
    (/metrics then adds up every process's files) has no room for a value read at scrape time, and
    one process's figure would pass for all of theirs."""

    door: Door | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.door is not None:
            yield GaugeMetricFamily("llm_broker_api_in_flight", "Requests this API process holds (open streams "
                                    "included)", value=self.door.in_flight)
            yield GaugeMetricFamily("llm_broker_api_loop_lag_recent_seconds", "The smoothed event-loop lag the door "
                                    "compares with server.shed_lag_ms", value=self.door.lag.lag_s)


REGISTRY.register(_InFlight())
