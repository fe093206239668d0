"""A protocol-faithful fake of OpenAI's Chat Completions API (https://platform.openai.com/docs/api-reference/chat).

Tests use it as the real upstream on a real port, and the benchmark uses it as the
baseline, so it must be both exact on the wire and cheap per request: bodies are
decoded once with msgspec, responses are Structs encoded by one module-level
encoder, and SSE events go straight to `send` (Starlette's StreamingResponse
spawns a task group per stream on uvicorn's ASGI spec 2.3, which we don't need).

What it answers (tool calls, parallel tool calls, JSON) and the request rules it
enforces live in openai_rules.py. The request's `model` picks a failure, so each
failure mode is one request away:

    fail-400 fail-429 fail-500 fail-503   plain HTTP errors with OpenAI bodies/headers
    midstream-error                       200, three words, then an error event, no [DONE]
    slow                                  waits 30 s before answering (timeouts)
    hold                                  waits 1 s before answering (a busy upstream: pools, concurrency)
    hang-stream                           one chunk, then a 30 s stall, then the rest
    flaky-429                             a 429 (retry-after: 1) the first time it sees a prompt, then answers
    chaos-<pct>                           fails pct% of calls at random, half 429 and half 500 (bench/failover.py)
    tail-<pct>-<ms>                       pct% of calls, at random, wait ms before answering (bench/hedging.py)
    small-context                         a 16-token window: longer prompts get OpenAI's context_length_exceeded

GET /v1/fake/stats counts the chat calls it has had (the benchmarks' upstream calls per request), and
how many of them the caller abandoned while they waited to answer (`abandoned`: hedging's losers).

A suffix after "@" is ignored ("fail-503@b" fails as "fail-503"): tests give each scenario its own
upstream model id, so the broker's per-deployment circuits of one scenario do not touch another's.

Run standalone (the benchmark does, in its own process):
    python -m tests.fakes.openai_upstream --port 9100 --chunks 20 --workers 1
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import uvicorn
from msgspec import UNSET, UnsetType
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive

from tests.fakes.openai_rules import (
    Answer,
    Call,
    Invalid,
    answer,
    pieces,
    prompt_tokens,
    validate,
)
from tests.fakes.openai_wire import (
    ChatChunk,
    ChatCompletion,
    ChatRequest,
    Choice,
    ChunkChoice,
    Delta,
    Function,
    Message,
    ToolCall,
    Usage,
)
from tests.fakes.server import EventStream, FakeServer, RecordedRequest

STALL_S = 30.0
HOLD_S = 1.0


_encoder = msgspec.json.Encoder()
_ids = itertools.count()


def _new_id(prefix: str) -> str:
    return f"{prefix}{os.getpid():x}{next(_ids):08x}"


# ---- errors (openai-openapi's `ErrorResponse`: all four keys, param/code may be null) ----


def error_response(
    status: int, message: str, type_: str, *, param: str | None = None,
    code: str | None = None, headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    hdrs = {"x-request-id": _new_id("req_"), **(headers or {})}
    return Response(_encoder.encode(body), status, hdrs, media_type="application/json")


def _injected_error(model: str) -> Response | None:
    match model:
        case "fail-400":
            return error_response(400, "Invalid value for 'messages': injected failure.",
                                  "invalid_request_error", param="messages")
        case "fail-429":
            return error_response(
                429, "Rate limit reached for fake-model on tokens per min (TPM): Limit 150000.",
                "tokens", code="rate_limit_exceeded",
                headers={"retry-after": "1", "x-ratelimit-limit-requests": "60",
                         "x-ratelimit-remaining-requests": "0",
                         "x-ratelimit-reset-requests": "1s",
                         "x-ratelimit-limit-tokens": "150000",
                         "x-ratelimit-remaining-tokens": "149984",
                         "x-ratelimit-reset-tokens": "6ms"})
        case "fail-500":
            return error_response(500, "The server had an error while processing your request. "
                                  "Sorry about that!", "server_error")
        case "fail-503":
            return error_response(503, "The engine is currently overloaded, please try again later.",
                                  "service_unavailable_error", code="server_is_overloaded")
    return None


def _auth_error(request: Request, api_key: str) -> Response | None:
    auth = request.headers.get("authorization", "")
    if auth == f"Bearer {api_key}":
        return None
    given = auth.removeprefix("Bearer ").strip()
    if not given:
        return error_response(
            401, "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error")
    # Mask like OpenAI does: a key must never be echoed back whole.
    masked = f"{given[:3]}{'*' * 4}{given[-4:]}" if len(given) > 8 else "****"
    return error_response(401, f"Incorrect API key provided: {masked}.",
                          "invalid_request_error", code="invalid_api_key")


def _validation_param(err: msgspec.ValidationError) -> str | None:
    # msgspec ends messages with "- at `$.messages[0].role`"; OpenAI's param is that path.
    _, sep, path = str(err).rpartition("- at `$.")
    return path.rstrip("`") if sep else None


# ---- the completion itself ----


class _Plan(msgspec.Struct):
    """What one request will answer, computed once for both response shapes."""

    id: str
    created: int
    model: str
    answer: Answer
    prompt_tokens: int

    @property
    def finish_reason(self) -> str:
        return self.answer.finish_reason

    def usage(self) -> Usage:
        done = self.answer.completion_tokens()
        return Usage(self.prompt_tokens, done, self.prompt_tokens + done)


def _plan(req: ChatRequest, chunks: int) -> _Plan:
    return _Plan(_new_id("chatcmpl-"), int(time.time()), req.model, answer(req, chunks, _new_id),
                 prompt_tokens(req))


def _completion(plan: _Plan) -> ChatCompletion:
    if plan.answer.calls:
        calls = [ToolCall(id=c.id, type="function", function=Function(c.name, c.arguments))
                 for c in plan.answer.calls]
        message = Message("assistant", None, tool_calls=calls)
    else:
        message = Message("assistant", "".join(plan.answer.pieces))
    return ChatCompletion(id=plan.id, created=plan.created, model=plan.model,
                          choices=[Choice(0, message, finish_reason=plan.finish_reason)],
                          usage=plan.usage())


# When a stalled request saw its client go away (time.time()): cancellation tests read it.
DISCONNECTS: collections.deque[float] = collections.deque(maxlen=1000)


async def _sleep_unless_disconnected(receive: Receive, delay_s: float) -> bool:
    """Sleep, but wake early (returning False) if the client goes away, so a stalled
    response doesn't pin the server's shutdown for the whole stall."""
    try:
        message = await asyncio.wait_for(receive(), delay_s)
    except TimeoutError:
        return True
    if message["type"] == "http.disconnect":
        DISCONNECTS.append(time.time())
        return False
    return True


def _call_deltas(index: int, call: Call) -> list[Delta]:
    # As OpenAI streams a call (the recorded gpt-4o streams behind openai-python's
    # tests/lib/chat/test_completions_streaming.py): id, type and name once, in the opening
    # fragment with arguments "", then only index + argument pieces; calls one after another.
    opening = [ToolCall(index, call.id, "function", Function(call.name, ""))]
    return [Delta(tool_calls=opening)] + [Delta(tool_calls=[ToolCall(index, function=Function(arguments=p))])
                                          for p in pieces(call.arguments)]


def _deltas(plan: _Plan) -> list[Delta]:
    if plan.answer.calls:
        out = [d for i, call in enumerate(plan.answer.calls) for d in _call_deltas(i, call)]
        out[0] = Delta("assistant", None, out[0].tool_calls, None)  # the role rides on the first fragment
        return out
    return [Delta("assistant", "", refusal=None)] + [Delta(content=w) for w in plan.answer.pieces]


async def _events(plan: _Plan, include_usage: bool, delay_s: float,
                  receive: Receive) -> AsyncIterator[bytes]:
    usage_field: None | UnsetType = None if include_usage else UNSET

    def event(choices: list[ChunkChoice], usage: Usage | None | UnsetType = usage_field) -> bytes:
        chunk = ChatChunk(id=plan.id, created=plan.created, model=plan.model, choices=choices,
                          usage=usage)
        return b"data: " + _encoder.encode(chunk) + b"\n\n"

    deltas = _deltas(plan)
    if plan.model == "midstream-error":
        deltas = deltas[:4]  # role chunk + three words, then the error instead of a finish
    for i, delta in enumerate(deltas):
        if i and delay_s:
            await asyncio.sleep(delay_s)
        yield event([ChunkChoice(0, delta)])
        if plan.model == "hang-stream" and i == 0:
            if not await _sleep_unless_disconnected(receive, STALL_S):
                return
    if plan.model == "midstream-error":
        yield MIDSTREAM_ERROR  # and no [DONE]: OpenAI just closes the stream (the SDK raises: `Stream.__stream__`)
        return
    yield event([ChunkChoice(0, Delta(), finish_reason=plan.finish_reason)])
    if include_usage:
        yield event([], plan.usage())
    yield b"data: [DONE]\n\n"


MIDSTREAM_ERROR = (
    b'data: {"error":{"message":"The server had an error while processing your request. '
    b'Sorry about that!","type":"server_error","param":null,"code":null}}\n\n'
)


# ---- app ----


def create_app(*, api_key: str | None = None, chunks: int = 20,
               chunk_delay_s: float = 0.0) -> Starlette:
    requests: collections.deque[RecordedRequest] = collections.deque(maxlen=1000)
    seen_prompts: set[str] = set()  # flaky-429: refused once each
    calls = [0]
    abandoned = [0]  # calls whose client left while they waited to answer

    async def wait_unless_abandoned(request: Request, delay_s: float) -> bool:
        if await _sleep_unless_disconnected(request.receive, delay_s):
            return True
        abandoned[0] += 1
        return False

    async def chat_completions(request: Request) -> Response:
        raw = await request.body()
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = None
        requests.append(RecordedRequest(request.method, request.url.path,
                                        dict(request.headers), body))
        calls[0] += 1
        if api_key is not None and (denied := _auth_error(request, api_key)):
            return denied
        if body is None:
            return error_response(400, "We could not parse the JSON body of your request.",
                                  "invalid_request_error")
        try:
            req = msgspec.convert(body, ChatRequest)
        except msgspec.ValidationError as e:
            return error_response(400, str(e), "invalid_request_error",
                                  param=_validation_param(e))
        req.model = req.model.split("@", 1)[0]
        if req.model.startswith("chaos-") and random.random() * 100 < float(req.model[6:]):
            return _injected_error(random.choice(("fail-429", "fail-500")))  # type: ignore[return-value]
        if req.model == "flaky-429":
            prompt = str(body.get("messages"))
            if prompt not in seen_prompts:
                seen_prompts.add(prompt)
                return _injected_error("fail-429")  # type: ignore[return-value]
        if req.model == "small-context" and len(str(body.get("messages")).split()) > 16:
            return error_response(400, "This model's maximum context length is 16 tokens. However, your messages "
                                  "resulted in more tokens. Please reduce the length of the messages.",
                                  "invalid_request_error", param="messages", code="context_length_exceeded")
        if injected := _injected_error(req.model):
            return injected
        try:
            validate(req)
        except Invalid as e:
            return error_response(400, e.message, "invalid_request_error", param=e.param, code=e.code)
        if req.model == "slow" or (req.model == "hang-stream" and not req.stream):
            if not await wait_unless_abandoned(request, STALL_S):
                return Response(status_code=499)
        if req.model == "hold" and not await wait_unless_abandoned(request, HOLD_S):
            return Response(status_code=499)
        if req.model.startswith("tail-"):
            pct, _, ms = req.model[5:].partition("-")
            if random.random() * 100 < float(pct) and not await wait_unless_abandoned(request, float(ms) / 1000):
                return Response(status_code=499)
        plan = _plan(req, chunks)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventStream(_events(plan, include_usage, chunk_delay_s, request.receive))
        if req.model == "midstream-error":
            return _injected_error("fail-500")  # type: ignore[return-value]
        return Response(_encoder.encode(_completion(plan)),
                        headers={"x-request-id": _new_id("req_")},
                        media_type="application/json")

    created = int(time.time())
    models_body = _encoder.encode({"object": "list", "data": [
        {"id": "fake-model", "object": "model", "created": created, "owned_by": "fake"}]})

    async def list_models(request: Request) -> Response:
        requests.append(RecordedRequest(request.method, request.url.path,
                                        dict(request.headers), None))
        return Response(models_body, media_type="application/json")

    async def azure_chat(request: Request) -> Response:
        if "api-version" not in request.query_params:
            return error_response(404, "Resource not found", "invalid_request_error")
        if api_key is not None and request.headers.get("api-key") == api_key:
            request.scope["headers"] = [*request.scope["headers"], (b"authorization", f"Bearer {api_key}".encode())]
        return await chat_completions(Request(request.scope, request.receive))

    def record(request: Request, body: Any) -> None:
        requests.append(RecordedRequest(request.method, request.url.path, dict(request.headers), body))

    def guard(request: Request, body: Any) -> Response | None:
        if api_key is not None and (denied := _auth_error(request, api_key)):
            return denied
        return _injected_error(str(body.get("model", "")))

    from tests.fakes.openai_legacy import legacy_routes
    from tests.fakes.openai_media import media_routes
    from tests.fakes.openai_rerank import rerank_routes
    from tests.fakes.openai_responses import responses_routes

    app = Starlette(routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/fake/stats", lambda _: Response(_encoder.encode({"chat_calls": calls[0], "abandoned": abandoned[0]}),
                                                   media_type="application/json"), methods=["GET"]),
        *legacy_routes(record, guard, chunks, EventStream),
        *responses_routes(record, guard, EventStream),
        *media_routes(record, guard, EventStream),
        *rerank_routes(record, guard),  # vLLM's, for cross-encoder models
        # Azure OpenAI: deployment in the path, api-version required, key in `api-key`.
        Route("/openai/deployments/{deployment}/chat/completions", azure_chat, methods=["POST"]),
    ])
    app.state.requests = requests
    return app


def app_from_env() -> Starlette:
    """uvicorn factory for multi-worker runs: each worker process rebuilds the app."""
    key = os.environ.get("FAKE_UPSTREAM_API_KEY") or None
    return create_app(api_key=key, chunks=int(os.environ.get("FAKE_UPSTREAM_CHUNKS", "20")),
                      chunk_delay_s=float(os.environ.get("FAKE_UPSTREAM_CHUNK_DELAY_S", "0")))


# ---- running it ----


class UpstreamServer(FakeServer):
    """The OpenAI fake, served; `UpstreamServer(chunks=3)` takes create_app's options."""

    def __init__(self, app: Starlette | None = None, **app_kwargs: Any) -> None:
        super().__init__(app if app is not None else create_app(**app_kwargs))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk-delay-s", type=float, default=0.0)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    # Passed by environment so that every worker process (spawned) sees the same settings.
    os.environ["FAKE_UPSTREAM_CHUNKS"] = str(args.chunks)
    os.environ["FAKE_UPSTREAM_CHUNK_DELAY_S"] = str(args.chunk_delay_s)
    os.environ["FAKE_UPSTREAM_API_KEY"] = args.api_key
    uvicorn.run("tests.fakes.openai_upstream:app_from_env", factory=True, host=args.host,
                port=args.port, workers=args.workers, loop="uvloop", http="httptools",
                log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
