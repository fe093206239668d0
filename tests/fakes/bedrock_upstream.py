"""A protocol-faithful fake of Bedrock Runtime's Converse API, over real HTTP.

    POST /model/{modelId}/converse          JSON answer
    POST /model/{modelId}/converse-stream   application/vnd.amazon.eventstream frames with CRCs
    POST /model/{modelId}/invoke            the rerankers' own bodies (bedrock_rerank.py)

Every request must be SigV4-signed for this region and service `bedrock` (bedrock_sigv4.py: botocore
recomputes the signature from what arrived) or carry one of its API keys; bodies decode into strict
Structs and follow Bedrock's conversation rules (bedrock_wire.py). Errors are Bedrock's: the type in
`x-amzn-ErrorType`, `{"message": ...}` in the body; in a stream, an exception frame.

What it answers, for the known model ids (MODELS) and cross-region profiles of them (`us.`, `eu.`...):
    a toolResult turn                   "Tool results: <each result's text>; ..."
    tools + "weather" in the prompt     "I'll check the weather." and a toolUse; two for "two cities";
      (or toolChoice any / tool)        forced: the calls only
    otherwise                           "I see N image(s). " (if any) + "You said: <the prompt>"
    Claude with `thinking` enabled      a reasoningContent block first (text and signature)
`maxTokens` and `stopSequences` cut the text; a system prompt mentioning "cache" reports cache reads
(100) and writes (20). Llama refuses toolChoice any / tool, as Bedrock does for it.

Model ids that fail (INJECTED and these):
    fake.dies-midway   streams "You said: he", then a modelStreamErrorException frame
    fake.filtered      stopReason content_filtered, no text (streams: "I can" first)
    fake.guardrail     stopReason guardrail_intervened with the guardrail's blocked-input message
    fake.slow          answers after 30 s
    fake.corrupt       streams a frame whose message CRC is wrong
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes import bedrock_rerank
from tests.fakes.bedrock_sigv4 import Keys, Refusal
from tests.fakes.bedrock_wire import ConverseRequest, event, exception, validate
from tests.fakes.server import FakeServer, RecordedRequest

REGION = "us-east-1"
MODELS = {  # model id → its output limit
    "anthropic.claude-3-5-haiku-20241022-v1:0": 8192, "anthropic.claude-3-7-sonnet-20250219-v1:0": 8192,
    "amazon.nova-lite-v1:0": 5000, "meta.llama3-1-8b-instruct-v1:0": 2048,
    "mistral.mistral-large-2407-v1:0": 8192, "cohere.command-r-plus-v1:0": 4096,
    "fake.dies-midway": 4096, "fake.filtered": 4096, "fake.guardrail": 4096, "fake.slow": 4096, "fake.corrupt": 4096,
}
PROFILE_PREFIXES = ("us.", "eu.", "apac.", "global.")
INJECTED = {
    "fake.invalid": (400, "ValidationException", "Malformed input request: #: extraneous key [fake] is not "
                     "permitted, please reformat your input and try again."),
    "fake.throttled": (429, "ThrottlingException", "Too many requests, please wait before trying again."),
    # A reranker's id (the adapter picks the body by the id's family), throttled.
    "cohere.rerank-fake-throttled": (429, "ThrottlingException", "Too many requests, please wait before trying again."),
    "fake.not-ready": (429, "ModelNotReadyException", "Model is not ready to serve inference requests. The AWS SDK "
                       "will automatically retry the operation."),
    "fake.unavailable": (503, "ServiceUnavailableException", "Bedrock is unable to process your request."),
    "fake.broken": (500, "InternalServerException", "The server encountered an internal error while processing "
                    "the request."),
}
CITIES = ("Paris", "London")
CACHE_READ, CACHE_WRITE = 100, 20
BLOCKED = "Sorry, the model cannot answer this question."
THINKING = "The user wants the weather; I should call the tool."
_ids = itertools.count()


def aws_error(status: int, kind: str, message: str) -> Response:
    return Response(json.dumps({"message": message}), status, media_type="application/json", headers={
        "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        "x-amzn-RequestId": str(uuid.uuid4())})


# ---- answers ----


def _words(text: str) -> int:
    return len(text.split())


def _prompt(req: ConverseRequest) -> str:
    return " ".join(b.text for b in req.messages[-1].content if b.text is not None)


def _tool_calls(req: ConverseRequest, model: str) -> list[dict[str, Any]] | None:
    config = req.tool_config
    if config is None:
        return None
    choice = config.tool_choice
    names = [t.tool_spec.name for t in config.tools if t.tool_spec is not None]
    forced = choice is not None and (choice.any is not None or choice.tool is not None)
    if not forced and "weather" not in _prompt(req).lower():
        return None
    name = choice.tool.name if choice is not None and choice.tool is not None else names[0]
    cities = CITIES if "two cities" in _prompt(req).lower() else CITIES[:1]
    return [{"toolUse": {"toolUseId": f"tooluse_{next(_ids):06d}{c[:2]}", "name": name, "input": {"city": c}}}
            for c in cities]


def answer(model: str, req: ConverseRequest) -> tuple[list[dict[str, Any]], str]:
    """The output message's content blocks and the stop reason."""
    if model == "fake.filtered":
        return [], "content_filtered"
    if model == "fake.guardrail":
        return [{"text": BLOCKED}], "guardrail_intervened"
    thinking = (req.additional_model_request_fields or {}).get("thinking", {}).get("type") == "enabled"
    reasoning = [{"reasoningContent": {"reasoningText": {"text": THINKING, "signature": "c2lnbmF0dXJl"}}}] \
        if thinking else []
    results = [b.tool_result for b in req.messages[-1].content if b.tool_result is not None]
    calls = None if results else _tool_calls(req, model)
    if calls is not None:
        forced = req.tool_config is not None and req.tool_config.tool_choice is not None \
            and req.tool_config.tool_choice.auto is None
        return reasoning + ([] if forced else [{"text": "I'll check the weather."}]) + calls, "tool_use"
    if results:
        text = "Tool results: " + "; ".join("".join(c.text or json.dumps(c.json) for c in r.content) for r in results)
    else:
        images = sum(b.image is not None for b in req.messages[-1].content)
        text = (f"I see {images} image(s). " if images else "") + f"You said: {_prompt(req)}"
    stop = "end_turn"
    for sequence in req.inference_config.stop_sequences or []:
        if sequence in text:
            text, stop = text.split(sequence)[0], "stop_sequence"
    words = text.split(" ")
    limit = req.inference_config.max_tokens
    if limit is not None and limit < len(words):
        text, stop = " ".join(words[:limit]), "max_tokens"
    return reasoning + [{"text": text}], stop


def usage(req: ConverseRequest, content: list[dict[str, Any]]) -> dict[str, int]:
    system = " ".join(b.text or "" for b in req.system)
    prompt = _words(system) + sum(_words(b.text or "") + 5 * (b.tool_use is not None or b.tool_result is not None)
                                  for m in req.messages for b in m.content)
    output = sum(_words(b.get("text", "")) + 5 * ("toolUse" in b)
                 + _words(b.get("reasoningContent", {}).get("reasoningText", {}).get("text", "")) for b in content)
    cached = "cache" in system.lower()
    read, write = (CACHE_READ, CACHE_WRITE) if cached else (0, 0)
    return {"inputTokens": prompt, "outputTokens": output, "totalTokens": prompt + output + read + write,
            **({"cacheReadInputTokens": read, "cacheWriteInputTokens": write} if cached else {})}


def converse(model: str, req: ConverseRequest) -> dict[str, Any]:
    content, stop = answer(model, req)
    return {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop,
            "usage": usage(req, content), "metrics": {"latencyMs": 42}}


async def converse_stream(model: str, req: ConverseRequest) -> AsyncIterator[bytes]:
    content, stop = answer(model, req)
    yield event("messageStart", {"role": "assistant"})
    if model == "fake.dies-midway":
        for piece in ("You said: ", "he"):
            yield event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
        yield exception("modelStreamErrorException", "The model encountered an error while streaming: "
                        "ModelStreamErrorException, please retry.")
        return
    if model == "fake.corrupt":
        good = event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "You"}})
        yield good[:-4] + bytes(4)  # the message CRC zeroed
        return
    if model == "fake.filtered":
        yield event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "I can"}})
    for index, block in enumerate(content):
        for frame in _block_frames(index, block):
            yield frame
    yield event("messageStop", {"stopReason": stop})
    yield event("metadata", {"usage": usage(req, content), "metrics": {"latencyMs": 42}})


def _block_frames(index: int, block: dict[str, Any]) -> list[bytes]:
    # Text arrives as deltas with no contentBlockStart; a tool call's start carries its id and name.
    frames: list[bytes] = []
    if "text" in block:
        words = block["text"].split(" ")
        pieces = [" ".join(words[i:i + 3]) + (" " if i + 3 < len(words) else "") for i in range(0, len(words), 3)]
        frames += [event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": p}}) for p in pieces]
    elif "toolUse" in block:
        call = block["toolUse"]
        frames.append(event("contentBlockStart", {"contentBlockIndex": index, "start": {
            "toolUse": {"toolUseId": call["toolUseId"], "name": call["name"]}}}))
        arguments = json.dumps(call["input"])
        frames += [event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": part}}})
                   for part in (arguments[:5], arguments[5:])]
    elif "reasoningContent" in block:
        reasoning = block["reasoningContent"]["reasoningText"]
        frames += [event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"reasoningContent": delta}})
                   for delta in ({"text": reasoning["text"]}, {"signature": reasoning["signature"]})]
    return frames + [event("contentBlockStop", {"contentBlockIndex": index})]


def _model_problem(model: str, req: ConverseRequest) -> str | None:
    limit = MODELS[model]
    asked = req.inference_config.max_tokens
    if asked is not None and asked > limit:
        return (f"The maximum tokens you requested exceeds the model limit of {limit}. Try again with a maximum "
                f"tokens value that is lower than {limit}.")
    choice = req.tool_config.tool_choice if req.tool_config else None
    if model.startswith("meta.") and choice is not None and choice.auto is None:
        member = "any" if choice.any is not None else "tool"
        return f"This model doesn't support the toolConfig.toolChoice.{member} field. Remove " \
               f"toolConfig.toolChoice.{member} and try again."
    thinking = (req.additional_model_request_fields or {}).get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024 or asked is None or budget >= asked:
            return "The model returned the following errors: thinking.budget_tokens: must be at least 1024 and " \
                   "less than max_tokens"
        if req.inference_config.temperature is not None or req.inference_config.top_p is not None:
            return "The model returned the following errors: temperature and top_p may not be set with thinking"
    return None


def _invoke(model: str, body: Any) -> Response:
    if model not in bedrock_rerank.RERANKERS:
        if model in MODELS:  # a chat model's InvokeModel body is its maker's; this fake speaks only Converse to it
            return aws_error(400, "ValidationException", "Malformed input request: this fake serves InvokeModel "
                             "for its rerankers only, please reformat your input and try again.")
        return aws_error(400, "ValidationException", "The provided model identifier is invalid.")
    if body is None:
        return aws_error(400, "SerializationException", "Unexpected content: the body is not JSON.")
    status, answer = bedrock_rerank.invoke(model, body)
    if status != 200:
        return aws_error(status, "ValidationException", answer["message"])
    return Response(json.dumps(answer), media_type="application/json")


# ---- app ----


def create_app(keys: Keys) -> Starlette:
    requests: collections.deque[RecordedRequest] = collections.deque(maxlen=1000)

    async def invoke(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        raw_path = request.scope.get("raw_path", b"").decode()
        requests.append(RecordedRequest(request.method, raw_path, dict(request.headers), body))
        try:
            keys.check(request, raw)
        except Refusal as refusal:
            return aws_error(403, refusal.kind, refusal.message)
        model, action = request.path_params["model"], request.path_params["action"]
        if action not in ("converse", "converse-stream", "invoke"):
            return aws_error(404, "UnknownOperationException", "")
        if injected := INJECTED.get(model):
            return aws_error(*injected)
        base = next((model[len(p):] for p in PROFILE_PREFIXES if model.startswith(p)), model)
        if action == "invoke":
            return _invoke(base, body)
        if base not in MODELS:
            return aws_error(400, "ValidationException", "The provided model identifier is invalid.")
        if body is None:
            return aws_error(400, "SerializationException", "Unexpected content: the body is not JSON.")
        try:
            req = msgspec.convert(body, ConverseRequest)
        except msgspec.ValidationError as exc:
            return aws_error(400, "ValidationException", f"1 validation error detected: {exc}")
        if problem := validate(req) or _model_problem(base, req):
            return aws_error(400, "ValidationException", problem)
        if base == "fake.slow":
            await asyncio.sleep(30)
        if action == "converse":
            return Response(json.dumps(converse(base, req)), media_type="application/json")
        return StreamingResponse(converse_stream(base, req), media_type="application/vnd.amazon.eventstream")

    app = Starlette(routes=[Route("/model/{model}/{action}", invoke, methods=["POST"])])
    app.state.requests = requests
    return app


class BedrockServer(FakeServer):
    """The fake on a free port; `base_url` is what a `kind: bedrock` provider's `endpoint_url` takes."""

    def __init__(self, keys: Keys) -> None:
        super().__init__(app=create_app(keys))
        self.base_url = f"http://127.0.0.1:{self.port}"
