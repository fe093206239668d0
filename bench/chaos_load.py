"""The chaos soak's clients: non-stream, streams, async jobs and resumed streams, spread over the API
processes, each request's outcome classified as its client saw it (bench/chaos.py checks them).

An outcome is one of:
    ok        the answer, whole (a stream: its `[DONE]` after a usage chunk with `cost`)
    refused   429 or 503 with `Retry-After` and an OpenAI error body: "retry later", honestly said
    error     any other status with an OpenAI error body, or an explicit error event in a stream
    hang      no answer by the request's deadline (+ a margin): the failure the soak exists to catch
    dropped   the connection broke (an API process was SIGKILLed under it: the soak says when)
    refused_connect   no API process listened on the port (one restarting): nothing was accepted
    dishonest an answer that is none of the above (a 500 without a body, a stream cut without an error)
    lost      an async job accepted with a 202 that Redis no longer knows (a failover lost it)
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import httpx

DEADLINE_S = 30  # server.request_timeout_s in the soak's config
ASYNC_DEADLINE_S = 60  # server.async_timeout_s
MARGIN_S = 15
KINDS = ("nonstream", "stream", "async", "resume")
WEIGHTS = (4, 3, 1.5, 1.5)


@dataclass
class Outcome:
    kind: str
    started: float  # monotonic
    ended: float = 0.0
    result: str = ""
    job_id: str = ""
    cost: float | None = None  # usage.cost the client saw with its answer
    detail: str = ""
    api: str = ""  # the base URL it went to
    wall: float = field(default_factory=time.time)  # when it started, to find it in the roles' logs


@dataclass
class Load:
    apis: list[str]  # base URLs, .../v1
    key: str
    rng: random.Random
    outcomes: list[Outcome] = field(default_factory=list)
    sent: int = 0

    def _headers(self, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}", **extra}

    def _body(self, stream: bool) -> dict[str, object]:
        self.sent += 1
        body: dict[str, object] = {"model": "chat", "max_tokens": 20,
                                   "messages": [{"role": "user", "content": f"chaos question {self.sent}"}]}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return body

    async def client(self, http: httpx.AsyncClient, stop_at: float) -> None:
        """One client: a request at a time until `stop_at`, with a short pause between."""
        while time.monotonic() < stop_at:
            kind = self.rng.choices(KINDS, WEIGHTS)[0]
            outcome = Outcome(kind, time.monotonic())
            self.outcomes.append(outcome)
            api = outcome.api = self.rng.choice(self.apis)
            try:
                run = {"nonstream": self.nonstream, "stream": self.stream, "async": self.async_job,
                       "resume": self.resume}[kind]
                await run(http, api, outcome)
            except httpx.ConnectError as exc:
                outcome.result, outcome.detail = "refused_connect", type(exc).__name__
            except httpx.TimeoutException as exc:
                outcome.result, outcome.detail = "hang", type(exc).__name__
            except httpx.TransportError as exc:
                outcome.result, outcome.detail = "dropped", type(exc).__name__
            outcome.ended = time.monotonic()
            await asyncio.sleep(self.rng.uniform(0.05, 0.3))

    async def nonstream(self, http: httpx.AsyncClient, api: str, o: Outcome) -> None:
        resp = await http.post(f"{api}/chat/completions", json=self._body(False), headers=self._headers(),
                               timeout=DEADLINE_S + MARGIN_S)
        o.job_id = resp.headers.get("x-request-id", "").removeprefix("req_")
        if resp.status_code == 200:
            o.result, o.cost = "ok", resp.json()["usage"].get("cost")
        else:
            o.result, o.detail = _refusal(resp)

    async def stream(self, http: httpx.AsyncClient, api: str, o: Outcome) -> None:
        await self._stream(http, api, o, leave_after=None)

    async def resume(self, http: httpx.AsyncClient, api: str, o: Outcome) -> None:
        await self._stream(http, api, o, leave_after=self.rng.randint(1, 5))

    async def _stream(self, http: httpx.AsyncClient, api: str, o: Outcome, leave_after: int | None) -> None:
        timeout = httpx.Timeout(DEADLINE_S + MARGIN_S)
        async with http.stream("POST", f"{api}/chat/completions", json=self._body(True), headers=self._headers(),
                               timeout=timeout) as resp:
            o.job_id = resp.headers.get("x-request-id", "").removeprefix("req_")
            if resp.status_code != 200:
                await resp.aread()
                o.result, o.detail = _refusal(resp)
                return
            state = _StreamState()
            async for line in resp.aiter_lines():
                if state.line(line, o) or (leave_after is not None and state.events >= leave_after):
                    break
        if o.result or leave_after is None:
            o.result = o.result or "dishonest"
            o.detail = o.detail or "the stream ended with neither [DONE] nor an error event"
            return
        # The client "lost its connection": it resumes after the last event it holds, from another API.
        headers = self._headers(**({"last-event-id": state.last_id} if state.last_id else {}))
        other = self.rng.choice(self.apis)
        async with http.stream("GET", f"{other}/jobs/{o.job_id}/events", headers=headers, timeout=timeout) as resp:
            if resp.status_code != 200:
                await resp.aread()
                o.result, o.detail = _refusal(resp)
                o.detail = "resume: " + o.detail
                return
            async for line in resp.aiter_lines():
                if state.line(line, o):
                    break
        if not o.result:
            o.result, o.detail = "dishonest", "the resumed stream ended with neither [DONE] nor an error event"

    async def async_job(self, http: httpx.AsyncClient, api: str, o: Outcome) -> None:
        resp = await http.post(f"{api}/chat/completions", json=self._body(False),
                               headers=self._headers(prefer="respond-async"), timeout=DEADLINE_S + MARGIN_S)
        if resp.status_code != 202:
            o.result, o.detail = _refusal(resp)
            return
        o.job_id = resp.json()["id"]
        end = time.monotonic() + ASYNC_DEADLINE_S + MARGIN_S
        while time.monotonic() < end:
            await asyncio.sleep(1)
            try:
                view = await http.get(f"{self.rng.choice(self.apis)}/jobs/{o.job_id}", headers=self._headers(),
                                      timeout=10)
            except httpx.TransportError:
                continue  # an API restarting: ask the other one next time
            if view.status_code == 404:
                o.result, o.detail = "lost", "GET /v1/jobs/{id} answers 404"
                return
            if view.status_code != 200:
                continue
            body = view.json()
            if body["status"] == "completed":
                o.result, o.cost = "ok", json.loads(json.dumps(body["response"]))["usage"].get("cost")
                return
            if body["status"] in ("failed", "cancelled", "expired"):
                o.result, o.detail = "error", f"job {body['status']}"
                return
        o.result, o.detail = "hang", "the job never ended"


class _StreamState:
    def __init__(self) -> None:
        self.events = 0
        self.last_id = ""
        self.cost: float | None = None

    def line(self, line: str, o: Outcome) -> bool:
        """Take one SSE line; True once the stream has ended (o.result set)."""
        if line.startswith("id: "):
            self.last_id = line[4:]
        if not line.startswith("data: "):
            return False
        data = line[6:]
        if data == "[DONE]":
            o.result, o.cost = ("ok", self.cost) if o.result == "" else (o.result, o.cost)
            return True
        event = json.loads(data)
        if "error" in event:
            o.result, o.detail = "error", str(event["error"].get("code") or event["error"].get("type"))
            return True
        self.events += 1
        if event.get("usage"):
            self.cost = event["usage"].get("cost")
        return False


def _refusal(resp: httpx.Response) -> tuple[str, str]:
    try:
        error = resp.json()["error"]
        honest = isinstance(error, dict) and "message" in error
    except (ValueError, KeyError, TypeError):
        honest, error = False, {}
    if not honest:
        return "dishonest", f"{resp.status_code} without an OpenAI error body"
    code = f"{resp.status_code} {error.get('code') or error.get('type')}"
    if resp.status_code in (429, 503):
        return ("refused", code) if "retry-after" in resp.headers else ("dishonest", code + " without Retry-After")
    return "error", code
