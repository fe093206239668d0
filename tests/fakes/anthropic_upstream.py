"""A protocol-faithful fake of Anthropic's Messages API (https://docs.anthropic.com/en/api/messages), on a real port.

It checks what the real API checks (headers; the request rules in anthropic_rules.py,
answered with the same 400 `invalid_request_error` bodies), records every request,
and answers like Claude on the wire: the JSON message of §5.2, or the event
sequence of §5.3 with `event:` lines (message_start with usage, ping,
content_block_start/delta/stop per block, message_delta with stop_reason and
cumulative output_tokens, message_stop).

What it answers:
    tool_choice {"type":"tool"} / "any"   a call of that tool (any: a weather tool, else the first)
    tools + a prompt about "weather"      "I'll check the weather." and a call; two calls for "two cities"
                                          (one if disable_parallel_tool_use)
    a tool_result turn                    text quoting the results
    otherwise                             "I see N image(s)." (if any) + "You said: <the prompt>"
    thinking {"type": "enabled"}          a signed thinking block first (a later turn must return it unchanged)
`max_tokens` and `stop_sequences` cut the text as the API does; a system prompt
mentioning "cache" reports cache read/creation tokens.

The model name injects failures:
    overloaded 529 overloaded_error · rate-limited 429 + retry-after · bad 400 · server-error 500
    midstream-error   200, some text, then `event: error` (overloaded_error), no message_stop

Run standalone (the benchmark does, in its own process, as it runs openai_upstream.py):
    python -m tests.fakes.anthropic_upstream --port 9200 --api-key fake --chunks 20 --workers 1
`--chunks N` makes the plain-text answer "tok0 tok1 … tok<N-1>", streamed one word per
content_block_delta, as the OpenAI fake's `--chunks` does: the same amount of streaming on both
sides of a comparison, whatever the prompt. Every request check stays on.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.anthropic_rules import Invalid, sign, validate
from tests.fakes.server import EventStream, FakeServer, RecordedRequest

CITIES = ("Paris", "Tokyo")
_ids = itertools.count()
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def _new_id(prefix: str) -> str:
    return f"{prefix}{os.getpid():x}{next(_ids):012x}"


def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> Response:
    request_id = _new_id("req_")
    body = {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id}
    return Response(_encoder.encode(body), status, {"request-id": request_id, **(headers or {})},
                    media_type="application/json")


INJECTED = {
    "overloaded": (529, "overloaded_error", "Overloaded", {}),
    "rate-limited": (429, "rate_limit_error", "This request would exceed the rate limit for your organization "
                     "of 50 requests per minute.", {"retry-after": "7",
                                                   "anthropic-ratelimit-requests-limit": "50",
                                                   "anthropic-ratelimit-requests-remaining": "0"}),
    "bad": (400, "invalid_request_error", "messages.0.content: injected invalid request", {}),
    "server-error": (500, "api_error", "Internal server error", {}),
}


# ---- reading the request ----


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    for block in content or []:
        if block.get("type") == "text":
            out.append(block["text"])
        elif block.get("type") == "tool_result":
            out.extend(_texts(block.get("content")))
    return out


def _system_text(system: Any) -> str:
    return system if isinstance(system, str) else " ".join(b["text"] for b in system or [])


def _sample(schema: dict[str, Any], city: str) -> dict[str, Any]:
    """An input that fits the tool's schema: properties filled by type (an enum by its first member), a
    city where a place is wanted."""
    props = schema.get("properties") or {}
    if not props:
        return {"answer": f"the weather in {city} is sunny"}
    by_type = {"integer": 3, "number": 21.5, "boolean": True, "array": ["sample"], "object": {}}
    return {name: (p["enum"][0] if p.get("enum") else
                   city if p.get("type", "string") == "string" and name in ("location", "city") else
                   by_type.get(p.get("type", "string"), "sample"))
            for name, p in props.items()}


class Answer(msgspec.Struct):
    blocks: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int
    cache_read: int
    cache_write: int


def plan(body: dict[str, Any], chunks: int | None = None) -> Answer:
    last = body["messages"][-1]
    prompt = " ".join(_texts(last["content"])) if last["role"] == "user" else ""
    last_blocks = last["content"] if isinstance(last["content"], list) else []
    results = [b for b in last_blocks if b.get("type") == "tool_result"]
    tools = {t["name"]: t for t in body.get("tools") or []}
    choice = body.get("tool_choice") or {"type": "auto"}
    parallel = not choice.get("disable_parallel_tool_use", False)
    weather = next((n for n in tools if "weather" in n), next(iter(tools), None))
    blocks: list[dict[str, Any]] = []
    called: list[str] = []
    if tools and choice["type"] == "tool":
        called = [choice["name"]]
    elif tools and (choice["type"] == "any" or (choice["type"] == "auto" and "weather" in prompt.lower()
                                                and not results)):
        if choice["type"] == "auto":  # unforced, Claude usually says something before calling
            blocks.append({"type": "text", "text": "I'll check the weather."})
        assert weather is not None
        called = [weather, weather] if "two cities" in prompt.lower() and parallel else [weather]
    if (body.get("thinking") or {}).get("type") == "enabled":
        thought = f"The user asks: {prompt or 'to go on'}. Let me think it through."
        blocks.append({"type": "thinking", "thinking": thought, "signature": sign(thought)})
    for name, city in zip(called, CITIES):
        blocks.append({"type": "tool_use", "id": _new_id("toolu_"), "name": name,
                       "input": _sample(tools[name]["input_schema"], city)})
    stop_reason, stop_sequence = ("tool_use" if called else "end_turn"), None
    output_tokens = 10 * len(called)
    if not called:
        if results:
            text = "Tool results: " + "; ".join(" ".join(_texts(r.get("content"))) for r in results)
        else:
            images = sum(1 for b in last_blocks if b.get("type") == "image")
            text = (f"I see {images} image(s). " if images else "") + f"You said: {prompt}"
            if chunks:  # the benchmark's fixed answer (see the module's docstring)
                text = " ".join(f"tok{i}" for i in range(chunks))
        for seq in body.get("stop_sequences") or []:
            if seq in text:
                text, stop_reason, stop_sequence = text[:text.index(seq)], "stop_sequence", seq
        words = text.split(" ")
        if len(words) > body["max_tokens"]:
            words, stop_reason, stop_sequence = words[:body["max_tokens"]], "max_tokens", None
        blocks.append({"type": "text", "text": " ".join(words)})
        output_tokens = len(words)
    cached = "cache" in _system_text(body.get("system"))
    return Answer(blocks, stop_reason, stop_sequence, input_tokens(body), output_tokens,
                  100 if cached else 0, 20 if cached else 0)


def input_tokens(body: dict[str, Any]) -> int:
    """The fake's tokenizer: a word a token, over the turns and the system prompt."""
    prompt_words = sum(len(t.split()) for m in body["messages"] for t in _texts(m["content"]))
    return prompt_words + len(_system_text(body.get("system")).split())


# ---- answering ----


def message(body: dict[str, Any], answer: Answer) -> dict[str, Any]:
    return {
        "id": _new_id("msg_"), "type": "message", "role": "assistant", "model": body["model"],
        "content": answer.blocks, "stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence,
        "usage": {"input_tokens": answer.input_tokens, "cache_creation_input_tokens": answer.cache_write,
                  "cache_read_input_tokens": answer.cache_read, "output_tokens": answer.output_tokens,
                  "service_tier": "standard"},
    }


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _encoder.encode({"type": event, **data}) + b"\n\n"


def fragments(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


_WORD = re.compile(r" ?[^ ]+| +")


def words(text: str) -> list[str]:
    """One piece per word, its leading space kept: "tok0 tok1" → "tok0", " tok1" (--chunks N streams N)."""
    return _WORD.findall(text)


async def events(body: dict[str, Any], answer: Answer, *, fail_midway: bool = False,
                 split: Callable[[str], list[str]] = lambda text: fragments(text, 6)) -> AsyncIterator[bytes]:
    start = message(body, answer)
    start.update(content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = {**start["usage"], "output_tokens": 1}
    yield sse("message_start", {"message": start})
    for index, block in enumerate(answer.blocks):
        if block["type"] == "text":
            yield sse("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            pieces = [{"type": "text_delta", "text": w} for w in split(block["text"])]
        elif block["type"] == "thinking":  # the signature comes whole, just before the block's stop
            yield sse("content_block_start", {"index": index, "content_block": {"type": "thinking", "thinking": "",
                                                                                 "signature": ""}})
            pieces = [{"type": "thinking_delta", "thinking": w} for w in fragments(block["thinking"], 9)]
            pieces.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            opening = {**block, "input": {}}
            yield sse("content_block_start", {"index": index, "content_block": opening})
            # As recorded from the API: an empty fragment first, then the JSON in arbitrary slices.
            raw = json.dumps(block["input"])
            pieces = [{"type": "input_json_delta", "partial_json": p} for p in ["", *fragments(raw, 7)]]
        if index == 0:
            yield sse("ping", {})
        for n, delta in enumerate(pieces):
            if fail_midway and n == 2:
                yield sse("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
                return
            yield sse("content_block_delta", {"index": index, "delta": delta})
        yield sse("content_block_stop", {"index": index})
    yield sse("message_delta", {"delta": {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence},
                                "usage": {"output_tokens": answer.output_tokens}})
    yield sse("message_stop", {})


def answer(body: Any, *, chunks: int | None = None,
           split: Callable[[str], list[str]] = lambda text: fragments(text, 6)) -> Response:
    """The answer to a Messages `body` that names its model, once the caller is let in. Vertex AI's fake
    (vertex_upstream.py) mounts the same answers under its own paths and auth."""
    try:
        validate(body)
    except Invalid as exc:
        return error_response(400, "invalid_request_error", str(exc))
    if injected := INJECTED.get(body["model"]):
        status, kind, text, headers = injected
        return error_response(status, kind, text, headers)
    plan_ = plan(body, chunks)
    if body.get("stream"):
        return EventStream(events(body, plan_, fail_midway=body["model"] == "midstream-error", split=split))
    if body["model"] == "midstream-error":
        return error_response(500, "api_error", "Internal server error")
    return Response(_encoder.encode(message(body, plan_)), headers={"request-id": _new_id("req_")},
                    media_type="application/json")


def count(body: Any) -> Response:
    """count_tokens' answer: the token count of a Messages body without max_tokens or stream."""
    try:
        if "max_tokens" in body or "stream" in body:
            raise Invalid(f"{'max_tokens' if 'max_tokens' in body else 'stream'}: Extra inputs are not permitted")
        validate({**body, "max_tokens": 1})
    except Invalid as exc:
        return error_response(400, "invalid_request_error", str(exc))
    return Response(_encoder.encode({"input_tokens": input_tokens(body)}), media_type="application/json")


def create_app(*, api_key: str, anthropic_version: str = "2023-06-01", chunks: int | None = None) -> Starlette:
    """`chunks`: answer plain prompts with that many words (the benchmark's cheap fixed answer)."""
    split = words if chunks else (lambda text: fragments(text, 6))
    requests: collections.deque[RecordedRequest] = collections.deque(maxlen=1000)

    async def messages(request: Request) -> Response:
        raw = await request.body()
        try:
            body = _decoder.decode(raw)  # msgspec: a cheaper decode than json's, and the same dicts
        except msgspec.DecodeError:
            body = None
        requests.append(RecordedRequest(request.method, request.url.path, dict(request.headers), body))
        given = request.headers.get("x-api-key")
        if not given:
            return error_response(401, "authentication_error", "x-api-key header is required")
        if given != api_key:
            return error_response(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") != anthropic_version:
            return error_response(400, "invalid_request_error", "anthropic-version: header is required")
        if not request.headers.get("content-type", "").startswith("application/json"):
            return error_response(400, "invalid_request_error", "content-type must be application/json")
        return answer(body, chunks=chunks, split=split)

    async def count_tokens(request: Request) -> Response:
        """https://docs.anthropic.com/en/api/messages-count-tokens: the same body without max_tokens."""
        raw = await request.body()
        body = json.loads(raw)
        requests.append(RecordedRequest(request.method, request.url.path, dict(request.headers), body))
        if request.headers.get("x-api-key") != api_key:
            return error_response(401, "authentication_error", "invalid x-api-key")
        return count(body)

    app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"]),
                            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"])])
    app.state.requests = requests
    return app


def anthropic_server(*, api_key: str) -> FakeServer:
    """The fake on a free port (not started: use it as a context manager).

    Its `base_url` ends in /v1 (OpenAI style); an `anthropic` provider takes the bare
    origin, `http://127.0.0.1:{port}`, as for https://api.anthropic.com.
    """
    return FakeServer(create_app(api_key=api_key))


# ---- running it standalone ----


def app_from_env() -> Starlette:
    """uvicorn factory for multi-worker runs: each worker process rebuilds the app from the environment."""
    chunks = int(os.environ.get("FAKE_ANTHROPIC_CHUNKS", "0")) or None
    return create_app(api_key=os.environ.get("FAKE_ANTHROPIC_API_KEY", "fake"), chunks=chunks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--api-key", default="fake", help="the x-api-key it demands (always checked, as by the API)")
    parser.add_argument("--chunks", type=int, default=0, help="answer plain prompts with N words, one per delta "
                        "(0: echo the prompt, as the tests see it)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    # Passed by environment so that every worker process (spawned) sees the same settings.
    os.environ["FAKE_ANTHROPIC_API_KEY"] = args.api_key
    os.environ["FAKE_ANTHROPIC_CHUNKS"] = str(args.chunks)
    # The cheap serving path, as openai_upstream.py's: uvloop + httptools, no access log, no lifespan.
    uvicorn.run("tests.fakes.anthropic_upstream:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, loop="uvloop", http="httptools", log_level="warning", access_log=False,
                lifespan="off")


if __name__ == "__main__":
    main()
