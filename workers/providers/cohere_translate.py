"""OpenAI Chat Completions ⇄ Cohere v2 (/v2/chat, /v2/embed, /v2/rerank): pure functions, no I/O.

Cohere's v2 is close to OpenAI's (https://docs.cohere.com/v2/docs/migrating-v1-to-v2): the same
roles, function tools, `tool_call_id` on tool results, `image_url` parts. What differs, and the
choices made here:
- `top_p` is `p`, `top_k` is `k`, `stop` is `stop_sequences`; one answer per call, so `n` > 1 is a 400.
- `tool_choice` is REQUIRED or NONE; a named function becomes REQUIRED with only that tool offered.
- JSON mode is `{"type": "json_object"}`, and a `json_schema` format is json_object with its schema
  (https://docs.cohere.com/docs/structured-outputs).
- A tool result's content goes as the string the client sent (the API takes a JSON string or blocks).
- Usage is what Cohere bills (`billed_units`), which is what the price applies to; `tokens` also
  counts what Cohere adds to the prompt itself and does not charge.
- finish reasons: COMPLETE and STOP_SEQUENCE → stop, MAX_TOKENS → length, TOOL_CALL → tool_calls;
  ERROR and TIMEOUT are failures, never an answer that merely looks short.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from broker.errors import InvalidRequest, UpstreamError, UpstreamTimeout, redact
from broker.wire import (
    ChatCompletion,
    ChatRequest,
    Choice,
    ImageUrlPart,
    Message,
    RefusalPart,
    ResponseMessage,
    TextPart,
    ToolCall,
    Usage,
)
from broker.wire import FunctionCall as OpenAIFunctionCall
from broker.wire.rerank import RerankRequest as InboundRerank
from workers.providers import cohere_wire as co

FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls"}
FAILED = frozenset({"ERROR", "TIMEOUT"})
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}

# ---------------------------------------------------------------- chat request


def to_upstream(req: ChatRequest, *, model: str, stream: bool) -> bytes:
    if isinstance(req.n, int) and req.n > 1:
        raise InvalidRequest("Cohere answers one choice per request; `n` must be 1", param="n")
    tools, choice = _tools(req)

    def given(value: Any) -> Any:
        return UNSET if value is None else value

    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    body = co.ChatRequest(
        model=model, messages=[_message(m, f"messages[{i}]") for i, m in enumerate(req.messages)], stream=stream,
        tools=tools, tool_choice=choice, response_format=_response_format(req),
        max_tokens=given(req.output_limit()), stop_sequences=given(stop) or UNSET, temperature=given(req.temperature),
        p=given(req.top_p), k=given(req.top_k), seed=given(req.seed), frequency_penalty=given(req.frequency_penalty),
        presence_penalty=given(req.presence_penalty),
    )
    return co.encoder.encode(body)


def _message(m: Message, path: str) -> co.ChatMessage:
    if m.role in ("system", "developer"):
        return co.SystemMessage(content=m.text())
    if m.role == "user":
        return co.UserMessage(content=_user_content(m, path))
    if m.role == "assistant":
        calls = [co.ToolCall(id=c.id, function=co.ToolCallFunction(name=c.function.name, arguments=c.function.arguments))
                 for c in (m.tool_calls or [])]
        text = m.text()
        return co.AssistantMessage(content=text if text or not calls else UNSET, tool_calls=calls or UNSET)
    if m.role == "tool" and isinstance(m.tool_call_id, str):
        return co.ToolMessage(tool_call_id=m.tool_call_id, content=m.text())
    raise InvalidRequest("Cohere takes tool results as `tool` messages with a `tool_call_id`, not legacy "
                         "`function` messages", param=f"{path}.role")


def _user_content(m: Message, path: str) -> str | list[co.TextContent | co.ImageContent]:
    if not isinstance(m.content, list):
        return m.content or ""
    parts: list[co.TextContent | co.ImageContent] = []
    for j, p in enumerate(m.content):
        if isinstance(p, TextPart):
            parts.append(co.TextContent(text=p.text))
        elif isinstance(p, RefusalPart):
            parts.append(co.TextContent(text=p.refusal))
        elif isinstance(p, ImageUrlPart):
            parts.append(co.ImageContent(image_url=co.ImageUrl(url=p.image_url.url, detail=p.image_url.detail)))
        else:
            raise InvalidRequest("Cohere takes text and image_url content parts only", param=f"{path}.content[{j}]")
    return parts


def _tools(req: ChatRequest) -> tuple[list[co.Tool] | UnsetType, str | UnsetType]:
    if not req.tools:
        return UNSET, UNSET
    tools = [co.Tool(function=co.FunctionDef(name=t.function.name, description=t.function.description,
                                             parameters=t.function.parameters or EMPTY_PARAMETERS))
             for t in req.tools]
    choice = req.tool_choice
    if choice == "required":
        return tools, "REQUIRED"
    if choice == "none":
        return tools, "NONE"
    if isinstance(choice, dict) and isinstance(name := (choice.get("function") or {}).get("name"), str):
        named = [t for t in tools if t.function.name == name]
        if not named:
            raise InvalidRequest(f"`tool_choice` names {name!r}, which is not among `tools`", param="tool_choice")
        return named, "REQUIRED"  # Cohere cannot name a tool: offering only that one forces it
    return tools, UNSET


def _response_format(req: ChatRequest) -> co.ResponseFormat | UnsetType:
    fmt = req.response_format if isinstance(req.response_format, dict) else {}
    if fmt.get("type") == "json_object":
        return co.ResponseFormat(type="json_object")
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return co.ResponseFormat(type="json_object", json_schema=schema if isinstance(schema, dict) else UNSET)
    return UNSET


# ---------------------------------------------------------------- chat response


def decode(decoder: msgspec.json.Decoder[Any], data: bytes, what: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"Cohere sent an invalid {what}: {exc}", retryable=True) from None


def from_upstream(data: bytes, *, model: str) -> ChatCompletion:
    resp: co.ChatResponse = decode(co.chat_decoder, data, "chat response")
    finish = finish_reason(resp.finish_reason, None)
    text = "".join(c.text for c in resp.message.content if c.type == "text")
    calls = [ToolCall(c.id or f"call_{i}", OpenAIFunctionCall(c.function.name or "", c.function.arguments or "{}"))
             for i, c in enumerate(resp.message.tool_calls) if c.function is not None]
    message = ResponseMessage(text if text or not calls else None, tool_calls=calls or UNSET)
    return ChatCompletion("", 0, model, [Choice(0, message, finish)], usage(resp.usage))


def finish_reason(reason: str | None, error: str | None) -> str:
    """OpenAI's finish_reason for Cohere's; raises for a generation Cohere says failed."""
    if reason in FAILED:
        why = f": {redact(error)}" if error else ""
        if reason == "TIMEOUT":
            raise UpstreamTimeout(f"Cohere stopped the generation at its time limit{why}")
        raise UpstreamError(f"Cohere's generation failed (finish_reason ERROR){why}", retryable=True)
    return FINISH.get(reason or "", "stop")


def usage(u: co.Usage | None) -> Usage | None:
    if u is None:
        return None
    counted = u.billed_units or u.tokens
    if counted is None:
        return None
    prompt, completion = round(counted.input_tokens), round(counted.output_tokens)
    return Usage(prompt, completion, prompt + completion)


# ---------------------------------------------------------------- embed and rerank

EMBED_BATCH = 96  # /v2/embed's maxItems for `texts`


def to_embed(texts: list[str], *, model: str, input_type: str, dimensions: int | None) -> bytes:
    return co.encoder.encode(co.EmbedRequest(model=model, texts=texts, input_type=input_type, embedding_types=["float"],
                                             output_dimension=dimensions if dimensions is not None else UNSET))


def from_embed(data: bytes, expected: int) -> tuple[list[list[float]], int]:
    """The float vectors and the billed input tokens."""
    resp: co.EmbedResponse = decode(co.embed_decoder, data, "embed response")
    vectors = resp.embeddings.floats
    if len(vectors) != expected:
        raise UpstreamError(f"Cohere returned {len(vectors)} embeddings for {expected} texts", retryable=True)
    billed = resp.meta.billed_units if resp.meta is not None else None
    return vectors, round(billed.input_tokens) if billed is not None else 0


def to_rerank(req: InboundRerank, *, model: str) -> bytes:
    return co.encoder.encode(co.RerankRequest(model=model, query=req.query, documents=req.texts(), top_n=req.top_n,
                                              max_tokens_per_doc=req.max_tokens_per_doc))


def from_rerank(data: bytes) -> tuple[list[tuple[int, float]], int | None, int | None]:
    """The scores, and the billed input tokens and search units when Cohere reported them."""
    resp: co.RerankResponse = decode(co.rerank_decoder, data, "rerank response")
    meta = resp.meta or co.Meta()
    billed = meta.billed_units
    tokens = meta.tokens.input_tokens if meta.tokens is not None else None
    searches = billed.search_units if billed is not None else None
    return ([(r.index, r.relevance_score) for r in resp.results],
            round(tokens) if tokens is not None else None, round(searches) if searches is not None else None)


# ---------------------------------------------------------------- errors


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """Cohere's `{"message": ...}` → the broker's error for its status. 498 is Cohere's invalid token:
    our key's problem (502, fails over), as a 401 is."""
    try:
        message = co.error_decoder.decode(body).message
    except msgspec.DecodeError:
        message = ""
    label = status
    if status == 498:
        status = 401
    retry = headers.get("retry-after")
    try:
        retry_after = float(retry) if retry is not None else None
    except ValueError:
        retry_after = None
    return UpstreamError.for_status(status, f"Cohere error ({label}): {redact(message or f'HTTP {label}')}",
                                    code="rate_limit_exceeded" if status == 429 else None, retry_after_s=retry_after)
