"""A protocol-faithful fake of Cohere's v2 API (https://docs.cohere.com/v2/reference/chat), over real HTTP.

Written from Cohere's OpenAPI document, not from our adapter: bodies decode into strict Structs
(cohere_wire.py) and conversations are checked as the API checks them; errors are Cohere's
`{"id", "message"}` with its statuses; the key must come as `Authorization: Bearer <key>`.

    POST /v2/chat      JSON, or with `stream: true` SSE: `event: <type>\\ndata: {...}\\n\\n` per event
                       (message-start, content-start, content-delta..., content-end, or tool-plan-delta...,
                       tool-call-start, tool-call-delta..., tool-call-end; then message-end with
                       finish_reason and usage {billed_units, tokens}); the body ends after message-end
    POST /v2/embed     `embeddings.float`, `meta.billed_units.input_tokens`
    POST /v2/rerank    results by word overlap (rerank_scores.py), `meta.billed_units.search_units`

The model picks a behaviour:
    fail-400 fail-429 fail-500 fail-503   Cohere error bodies (429: a trial key's limit)
    midstream-error                       streams a few words, then message-end with finish_reason ERROR
Otherwise: tool results are summarised; with tools and "weather" in the prompt (or tool_choice
REQUIRED) a tool plan and a call, two parallel ones when the prompt says "two cities"; JSON mode
answers an object shaped by json_schema; plain prompts are echoed ("You said: ..."). `tokens` counts
50 more input tokens than `billed_units`: what Cohere adds to the prompt and does not bill.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.cohere_wire import (
    ChatRequest,
    EmbedRequest,
    ImageContent,
    RerankRequest,
    TextContent,
    ToolMessage,
    UserMessage,
    validate,
)
from tests.fakes.rerank_scores import overlap
from tests.fakes.server import EventStream, FakeServer, RecordedRequest

UNBILLED_PROMPT_TOKENS = 50
EMBED_V4_DIMENSIONS = (256, 512, 1024, 1536)


def cohere_error(status: int, message: str) -> Response:
    return Response(json.dumps({"id": str(uuid.uuid4()), "message": message}), status,
                    media_type="application/json")


def _auth_error(request: Request, api_key: str) -> Response | None:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given == api_key:
        return None
    return cohere_error(401, "no api key supplied" if not given else "invalid api token")


def _injected_error(model: str) -> Response | None:
    match model:
        case "fail-400":
            return cohere_error(400, "invalid request: this model does not accept that request")
        case "fail-429":
            return cohere_error(429, "You are using a Trial key, which is limited to 10 API calls / minute. "
                                     "You can continue to use the Trial key for free or upgrade to a Production key")
        case "fail-500":
            return cohere_error(500, "internal server error, this has been reported to our developers")
        case "fail-503":
            return cohere_error(503, "service unavailable, the model is overloaded")
    return None


# ---- chat ----


def _text_of(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return " ".join(p.text for p in content if isinstance(p, TextContent))


def _sample(schema: Any) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind and schema.get("enum"):
        return schema["enum"][0]
    if kind == "object":
        return {k: _sample(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_sample(schema.get("items"))]
    return {"string": "sunny", "integer": 15, "number": 15.5, "boolean": True}.get(str(kind), "ok")


def _call_id(name: str, n: int) -> str:
    return f"{name}_{hashlib.sha256(f'{name}{n}'.encode()).hexdigest()[:12]}"


def plan(req: ChatRequest) -> dict[str, Any]:
    """The whole answer: {"text" | "tool_plan" + "calls", "finish_reason"}."""
    last = req.messages[-1]
    results: list[ToolMessage] = []
    for m in reversed(req.messages):  # the turn's tool results: the tool messages at the end
        if not isinstance(m, ToolMessage):
            break
        results.insert(0, m)
    prompt = _text_of(last.content) if isinstance(last, UserMessage) else ""
    if results:
        return {"text": "Results: " + "; ".join(f"{m.tool_call_id.rsplit('_', 1)[0]} -> {m.content}" for m in results),
                "finish_reason": "COMPLETE"}
    if req.tools and req.tool_choice != "NONE" and (req.tool_choice == "REQUIRED" or "weather" in prompt.lower()):
        name = req.tools[0].function.name
        cities = ["Paris", "London"] if "two cities" in prompt.lower() else ["Paris"]
        calls = [{"id": _call_id(name, n), "type": "function",
                  "function": {"name": name, "arguments": json.dumps({"city": city})}} for n, city in enumerate(cities)]
        return {"tool_plan": f"I will look up the weather in {' and '.join(cities)}.", "calls": calls,
                "finish_reason": "TOOL_CALL"}
    if req.response_format is not None and req.response_format.type == "json_object":
        schema = req.response_format.json_schema
        return {"text": json.dumps(_sample(schema) if schema else {"answer": "ok"}), "finish_reason": "COMPLETE"}
    seen = []
    if isinstance(last, UserMessage) and not isinstance(last.content, str):
        for part in last.content:
            if isinstance(part, ImageContent):
                url = part.image_url.url
                seen.append(url.split(";", 1)[0].removeprefix("data:") if url.startswith("data:") else url)
    text = f"You said: {prompt}" + (f" [saw {', '.join(seen)}]" if seen else "")
    finish = "COMPLETE"
    for stop in req.stop_sequences:
        if stop in text:
            text, finish = text.split(stop)[0], "STOP_SEQUENCE"
    words = text.split(" ")
    if req.max_tokens is not None and req.max_tokens < len(words):
        return {"text": " ".join(words[:req.max_tokens]), "finish_reason": "MAX_TOKENS"}
    return {"text": text, "finish_reason": finish}


def _usage(req: ChatRequest, answer: dict[str, Any]) -> dict[str, Any]:
    prompt = sum(len(_text_of(m.content).split()) for m in req.messages if not isinstance(m, ToolMessage))
    prompt += sum(len(str(m.content).split()) for m in req.messages if isinstance(m, ToolMessage))
    output = len(answer.get("text", "").split()) + 10 * len(answer.get("calls", []))
    return {"billed_units": {"input_tokens": float(prompt), "output_tokens": float(output)},
            "tokens": {"input_tokens": float(prompt + UNBILLED_PROMPT_TOKENS), "output_tokens": float(output)}}


def chat_body(req: ChatRequest, answer: dict[str, Any], reply_id: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant"}
    if "calls" in answer:
        message |= {"tool_plan": answer["tool_plan"], "tool_calls": answer["calls"]}
    else:
        message["content"] = [{"type": "text", "text": answer["text"]}]
    return {"id": reply_id, "message": message, "finish_reason": answer["finish_reason"], "usage": _usage(req, answer)}


def _event(payload: dict[str, Any]) -> bytes:
    # Cohere names each event twice: in the SSE `event:` field and in the JSON's `type`.
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [" ".join(words[i:i + 2]) + (" " if i + 2 < len(words) else "") for i in range(0, len(words), 2)]


async def chat_events(req: ChatRequest, answer: dict[str, Any], reply_id: str, *, dies: bool) -> AsyncIterator[bytes]:
    yield _event({"type": "message-start", "id": reply_id, "delta": {"message": {"role": "assistant"}}})
    if "calls" in answer:
        for piece in _pieces(answer["tool_plan"]):
            yield _event({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": piece}}})
        for index, call in enumerate(answer["calls"]):
            arguments = call["function"]["arguments"]
            opened = {"id": call["id"], "type": "function", "function": {"name": call["function"]["name"],
                                                                          "arguments": ""}}
            yield _event({"type": "tool-call-start", "index": index, "delta": {"message": {"tool_calls": opened}}})
            for start in range(0, len(arguments), 5):
                yield _event({"type": "tool-call-delta", "index": index, "delta": {"message": {
                    "tool_calls": {"function": {"arguments": arguments[start:start + 5]}}}}})
            yield _event({"type": "tool-call-end", "index": index})
    else:
        yield _event({"type": "content-start", "index": 0,
                      "delta": {"message": {"content": {"type": "text", "text": ""}}}})
        pieces = _pieces(answer["text"])
        for piece in pieces[:1] if dies else pieces:
            yield _event({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": piece}}}})
        if dies:
            yield _event({"type": "message-end", "delta": {
                "error": "an internal error interrupted the generation", "finish_reason": "ERROR"}})
            return
        yield _event({"type": "content-end", "index": 0})
    yield _event({"type": "message-end", "delta": {"finish_reason": answer["finish_reason"],
                                                   "usage": _usage(req, answer)}})


# ---- embed and rerank ----


def embedding(text: str, dimensions: int) -> list[float]:
    out: list[float] = []
    seed = text.encode()
    while len(out) < dimensions:
        seed = hashlib.sha256(seed).digest()
        out += [round(b / 127.5 - 1, 6) for b in seed]
    return out[:dimensions]


def embed(req: EmbedRequest) -> Response:
    if "float" not in req.embedding_types:
        return cohere_error(400, "invalid request: this fake answers float embeddings only")
    if req.output_dimension is not None and (not req.model.startswith("embed-v4")
                                             or req.output_dimension not in EMBED_V4_DIMENSIONS):
        return cohere_error(400, f"invalid request: output_dimension must be one of {EMBED_V4_DIMENSIONS} "
                                 "and is only available for embed-v4 and newer models")
    dims = req.output_dimension or 1536
    tokens = sum(len(t.split()) for t in req.texts)
    return Response(json.dumps({
        "id": str(uuid.uuid4()), "texts": req.texts, "response_type": "embeddings_by_type",
        "embeddings": {"float": [embedding(t, dims) for t in req.texts]},
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": float(tokens)}}}),
        media_type="application/json")


def rerank(req: RerankRequest) -> Response:
    scored = sorted(((overlap(req.query, d), i) for i, d in enumerate(req.documents)), key=lambda s: (-s[0], s[1]))
    results = [{"index": i, "relevance_score": score} for score, i in scored[:req.top_n]]
    return Response(json.dumps({"id": str(uuid.uuid4()), "results": results, "meta": {
        "api_version": {"version": "2"}, "billed_units": {"search_units": math.ceil(len(req.documents) / 100)}}}),
        media_type="application/json")


# ---- app ----


def create_app(*, api_key: str) -> Starlette:
    requests: collections.deque[RecordedRequest] = collections.deque(maxlen=1000)

    async def handle(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        requests.append(RecordedRequest(request.method, request.url.path, dict(request.headers), body))
        if denied := _auth_error(request, api_key):
            return denied
        if not isinstance(body, dict):
            return cohere_error(400, "invalid request: cannot parse request body")
        if injected := _injected_error(str(body.get("model", "")).split("@", 1)[0]):
            return injected
        endpoint = request.url.path.rsplit("/", 1)[-1]
        try:
            if endpoint == "embed":
                return embed(msgspec.convert(body, EmbedRequest))
            if endpoint == "rerank":
                return rerank(msgspec.convert(body, RerankRequest))
            req = msgspec.convert(body, ChatRequest)
        except msgspec.ValidationError as exc:
            return cohere_error(400, f"invalid request: {exc}")
        if problem := validate(req):
            return cohere_error(400, problem)
        answer, reply_id = plan(req), str(uuid.uuid4())
        if req.stream:
            return EventStream(chat_events(req, answer, reply_id, dies=req.model == "midstream-error"))
        if req.model == "midstream-error":
            return cohere_error(500, "internal server error, this has been reported to our developers")
        return Response(json.dumps(chat_body(req, answer, reply_id)), media_type="application/json")

    app = Starlette(routes=[Route(f"/v2/{name}", handle, methods=["POST"]) for name in ("chat", "embed", "rerank")])
    app.state.requests = requests
    return app


class CohereServer(FakeServer):
    """The fake on a free port; `base_url` is the API root a `kind: cohere` provider takes."""

    def __init__(self, api_key: str) -> None:
        super().__init__(app=create_app(api_key=api_key))
        self.base_url = f"http://127.0.0.1:{self.port}"
