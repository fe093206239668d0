"""A protocol-faithful fake of the Gemini Developer API v1beta (https://ai.google.dev/api/generate-content), over real HTTP.

Written from the protos (google/ai/generativelanguage/v1beta), not from our
adapter's Structs, so it proves the translation: bodies decode into strict
Structs (the real API rejects unknown fields with 400 INVALID_ARGUMENT), and the
conversation rules the real API enforces are checked (roles alternate, a
function-call turn is answered by as many functionResponse parts, one data
field per part). Errors are Google's `{"error": {code, message, status, details}}`.

    POST /v1beta/models/{model}:generateContent
    POST /v1beta/models/{model}:streamGenerateContent?alt=sse   data: {...}\\r\\n\\r\\n, no [DONE]
    POST /v1beta/models/{model}:batchEmbedContents              deterministic vectors, outputDimensionality honoured

The model name picks a behaviour:
    fail-400 fail-429 fail-500 fail-503   Google error bodies (429 carries RetryInfo retryDelay "7s")
    blocked-prompt               no candidates, promptFeedback.blockReason SAFETY
    unsafe-answer                finishReason SAFETY (streams: a few words first)
    thinking                     a thought part, thoughtsTokenCount, thoughtSignature on function calls
    cut-stream                   streams two words, then the body ends with no finishReason
Otherwise: tool results are summarised; with tools and "weather" in the prompt (or mode ANY)
a function call, two parallel ones when the prompt says "two cities"; JSON mode answers an
object shaped by responseJsonSchema; plain prompts are echoed ("You said: ...").
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.gemini_wire import (
    BatchEmbedContentsRequest,
    GenerateContentRequest,
    validate,
)
from tests.fakes.server import EventStream, FakeServer, RecordedRequest

EMBEDDING_DIMENSIONS = 768
THOUGHTS = 7  # thoughtsTokenCount of the "thinking" model
THOUGHT_SIGNATURE = "CikBcsjafFK1+68IbtVt/oxVV0Tsn8O=="  # standard base64, as Google sends bytes


# ---- errors (https://ai.google.dev/gemini-api/docs/troubleshooting) ----


def google_error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> Response:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return Response(json.dumps({"error": error}, indent=2), code, media_type="application/json; charset=UTF-8")


def _auth_error(request: Request, api_key: str) -> Response | None:
    given = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if given == api_key:
        return None
    if not given:
        return google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
                            "established identity). Please use API Key or other form of API consumer identity "
                            "to call this API.")
    return google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
         "metadata": {"service": "generativelanguage.googleapis.com"}}])


def _injected_error(model: str) -> Response | None:
    if model == "fail-400":
        return google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
    if model == "fail-429":
        return google_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan "
                            "and billing details.", [
                                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                                    {"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                                     "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]},
                                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}])
    if model == "fail-503":
        return google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
    if model == "fail-500":
        return google_error(500, "INTERNAL", "Internal error encountered.")
    return None


def _decode_error(exc: msgspec.ValidationError) -> Response:
    # Google: 'Invalid JSON payload received. Unknown name "x" at 'generation_config': Cannot find field.'
    return google_error(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. {exc}")


# ---- answers ----


def _words(text: str) -> int:
    return len(text.split())


def _prompt_tokens(req: GenerateContentRequest) -> int:
    contents = req.contents + ([req.system_instruction] if req.system_instruction else [])
    return sum(_words(p.text or "") for c in contents for p in c.parts) + 258 * sum(
        p.inline_data is not None for c in req.contents for p in c.parts)  # Google counts an image as 258


def _sample(schema: Any) -> Any:
    """A value that fits a JSON Schema well enough for tests (an enum: its first member)."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind and schema.get("enum"):
        return schema["enum"][0]
    if kind == "object":
        return {k: _sample(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_sample(schema.get("items"))]
    return {"string": "sunny", "integer": 15, "number": 15.5, "boolean": True}.get(str(kind), "ok")


def _plan(model: str, req: GenerateContentRequest) -> tuple[list[dict[str, Any]], str]:
    """The parts of one candidate and its finishReason."""
    last = req.contents[-1]
    prompt = " ".join(p.text for p in last.parts if p.text is not None)
    declared = [d.name for t in req.tools for d in t.function_declarations]
    fcc = req.tool_config.function_calling_config
    config = req.generation_config
    responses = [p.function_response for p in last.parts if p.function_response is not None]
    if responses:
        text = "Results: " + "; ".join(f"{r.name} -> {json.dumps(r.response, sort_keys=True)}" for r in responses)
    elif declared and fcc.mode != "NONE" and (fcc.mode == "ANY" or "weather" in prompt.lower()):
        name = (fcc.allowed_function_names or declared)[0]
        cities = ["Paris", "London"] if "two cities" in prompt.lower() else ["Paris"]
        calls: list[dict[str, Any]] = [{"functionCall": {"name": name, "args": {"city": city}}} for city in cities]
        if model == "thinking":
            calls[0]["thoughtSignature"] = THOUGHT_SIGNATURE  # only the first call of a turn carries it
        return calls, "STOP"
    elif config.response_mime_type == "application/json":
        text = json.dumps(_sample(config.response_json_schema) if config.response_json_schema else {"answer": "ok"})
    else:
        media = [p.inline_data.mime_type for p in last.parts if p.inline_data is not None]
        media += [p.file_data.file_uri for p in last.parts if p.file_data is not None]
        text = f"You said: {prompt}" + (f" [saw {', '.join(media)}]" if media else "")
    for stop in config.stop_sequences:
        text = text.split(stop)[0]
    words = text.split(" ")
    if config.max_output_tokens is not None and config.max_output_tokens < len(words):
        return [{"text": " ".join(words[:config.max_output_tokens])}], "MAX_TOKENS"
    return [{"text": text}], "STOP"


def _usage(req: GenerateContentRequest, candidates: list[list[dict[str, Any]]], model: str) -> dict[str, Any]:
    prompt = _prompt_tokens(req)
    output = sum(_words(p.get("text", "")) + 5 * ("functionCall" in p) for parts in candidates for p in parts)
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": output,
             "totalTokenCount": prompt + output + (THOUGHTS if model == "thinking" else 0),
             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    if model == "thinking":
        usage["thoughtsTokenCount"] = THOUGHTS
    return usage


_SAFETY_RATINGS = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]


def _response(body: dict[str, Any], response_id: str) -> dict[str, Any]:
    return {**body, "modelVersion": "gemini-fake-001", "responseId": response_id}


def generate(model: str, req: GenerateContentRequest, response_id: str) -> dict[str, Any]:
    if model == "blocked-prompt":
        return _response({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": _SAFETY_RATINGS},
                          "usageMetadata": {"promptTokenCount": _prompt_tokens(req),
                                            "totalTokenCount": _prompt_tokens(req)}}, response_id)
    if model == "unsafe-answer":
        return _response({"candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": _SAFETY_RATINGS}],
                          "usageMetadata": _usage(req, [], model)}, response_id)
    plans = [_plan(model, req) for _ in range(req.generation_config.candidate_count)]
    candidates = []
    for i, (parts, finish) in enumerate(plans):
        if model == "thinking":
            parts = [{"text": "Let me think about the weather.", "thought": True}, *parts]
        candidates.append({"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": i})
    return _response({"candidates": candidates, "usageMetadata": _usage(req, [p for p, _ in plans], model)},
                     response_id)


def _sse(payload: dict[str, Any]) -> bytes:
    # Google frames events with CRLF (seen from Vertex AI and the Developer API); no [DONE] at the end.
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\r\n\r\n"


async def stream(model: str, req: GenerateContentRequest, response_id: str) -> AsyncIterator[bytes]:
    whole = generate(model, req, response_id)
    if model == "blocked-prompt":
        yield _sse(whole)
        return
    usage = whole["usageMetadata"]
    if model in ("unsafe-answer", "cut-stream"):
        yield _sse(_response({"candidates": [{"content": {"parts": [{"text": "I can"}], "role": "model"},
                                              "index": 0}], "usageMetadata": usage}, response_id))
        if model == "unsafe-answer":
            yield _sse(whole)
        return
    for candidate in whole["candidates"]:
        pieces: list[dict[str, Any]] = []
        for part in candidate["content"]["parts"]:
            if "text" in part and not part.get("thought"):
                words = part["text"].split(" ")
                pieces += [{"text": " ".join(words[i:i + 3]) + (" " if i + 3 < len(words) else "")}
                           for i in range(0, len(words), 3)]
            else:
                pieces.append(part)  # thoughts and function calls arrive whole
        for n, piece in enumerate(pieces):
            event: dict[str, Any] = {"content": {"parts": [piece], "role": "model"}, "index": candidate["index"]}
            if n == len(pieces) - 1:
                event["finishReason"] = candidate["finishReason"]
            yield _sse(_response({"candidates": [event], "usageMetadata": usage}, response_id))


# ---- embeddings ----


def embedding(text: str, dimensions: int) -> list[float]:
    """Deterministic per text; a smaller dimensionality is a prefix, as Google truncates from the end."""
    out: list[float] = []
    seed = text.encode()
    while len(out) < dimensions:
        seed = hashlib.sha256(seed).digest()
        out += [round(b / 127.5 - 1, 6) for b in seed]
    return out[:dimensions]


def embed(model: str, req: BatchEmbedContentsRequest) -> Response:
    if not req.requests or len(req.requests) > 100:
        return google_error(400, "INVALID_ARGUMENT", "* BatchEmbedContentsRequest.requests: between 1 and 100 requests.")
    vectors = []
    for i, r in enumerate(req.requests):
        if r.model != f"models/{model}":
            return google_error(400, "INVALID_ARGUMENT", f"Model names should match: requests[{i}].model is "
                                f"{r.model!r}, the batch is for models/{model}.")
        if not r.content.parts or any(p.text is None for p in r.content.parts):
            return google_error(400, "INVALID_ARGUMENT", f"* requests[{i}].content: only text parts are embedded.")
        dims = r.output_dimensionality or EMBEDDING_DIMENSIONS
        if not 1 <= dims <= 3072:
            return google_error(400, "INVALID_ARGUMENT", f"* requests[{i}].output_dimensionality: out of range.")
        vectors.append({"values": embedding(" ".join(p.text or "" for p in r.content.parts), dims)})
    return Response(json.dumps({"embeddings": vectors}), media_type="application/json; charset=UTF-8")


# ---- app ----


def answer(model: str, action: str, body: Any, *, alt: str | None, response_id: str) -> Response:
    """A model method's answer to a JSON `body` (None: it was not JSON), once the caller is let in.
    Vertex AI's fake (vertex_upstream.py) mounts the same answers under its own paths and auth."""
    if body is None:
        return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
    if injected := _injected_error(model):
        return injected
    try:
        if action == "batchEmbedContents":
            return embed(model, msgspec.convert(body, BatchEmbedContentsRequest))
        req = msgspec.convert(body, GenerateContentRequest)
    except msgspec.ValidationError as exc:
        return _decode_error(exc)
    if problem := validate(req):
        return google_error(400, "INVALID_ARGUMENT", problem)
    if action == "generateContent":
        return Response(json.dumps(generate(model, req, response_id)), media_type="application/json; charset=UTF-8")
    if action == "streamGenerateContent" and alt == "sse":
        return EventStream(stream(model, req, response_id))
    return google_error(404, "NOT_FOUND", f"Method {action!r} is not served by this fake.")


async def read_json(request: Request, requests: collections.deque[RecordedRequest]) -> Any:
    """The body as JSON (None if it is not), the request recorded."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    requests.append(RecordedRequest(request.method, path, dict(request.headers), body))
    return body


def create_app(*, api_key: str) -> Starlette:
    requests: collections.deque[RecordedRequest] = collections.deque(maxlen=1000)
    counter = iter(range(1, 1 << 30))

    async def models(request: Request) -> Response:
        body = await read_json(request, requests)
        if denied := _auth_error(request, api_key):
            return denied
        model, _, action = request.path_params["target"].rpartition(":")
        return answer(model, action, body, alt=request.query_params.get("alt"),
                      response_id=f"fakeResp{next(counter):04d}")

    app = Starlette(routes=[Route("/v1beta/models/{target:path}", models, methods=["POST"])])
    app.state.requests = requests
    return app


class GeminiServer(FakeServer):
    """The fake on a free port; `base_url` is the v1beta root a `kind: gemini` provider takes."""

    def __init__(self, api_key: str) -> None:
        super().__init__(app=create_app(api_key=api_key))
        self.base_url = f"http://127.0.0.1:{self.port}/v1beta"
