"""OpenAI Chat Completions ↔ Anthropic Messages, as pure functions.

From https://platform.openai.com/docs/api-reference/chat/create to https://docs.anthropic.com/en/api/messages
and back; where Anthropic's own OpenAI layer decided a mapping (system messages hoisted, temperature
capped at 1, n=1), https://docs.anthropic.com/en/api/openai-sdk is followed.

No I/O here, so golden tests check every mapping against recorded payloads
(tests/fixtures/anthropic/). The wire Structs are in anthropic_wire.py, stream
events in anthropic_stream.py; the adapter (anthropic.py) only wires HTTP to these.

JSON mode has no portable native field on the Messages API (`output_config`
depends on the model), so it is a forced tool: the model must call
`json_response` whose `input_schema` is the client's schema, and that tool's
input comes back to the client as the assistant's `content` with
finish_reason "stop". The response side needs to know a request was in JSON
mode, hence the `json_mode` flags below.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from msgspec import UNSET

from broker.errors import InvalidRequest, UpstreamError, redact
from broker.wire import (
    ChatCompletion,
    ChatRequest,
    Choice,
    ContentPart,
    FunctionCall,
    ImageUrlPart,
    Message,
    RefusalPart,
    ResponseMessage,
    TextPart,
    ToolCall,
    Usage,
)
from broker.wire.messages import (
    Base64Source,
    ContentBlock,
    ImageBlock,
    MessagesRequest,
    Metadata,
    TextBlock,
    ThinkingConfig,
    Tool,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
    Turn,
    URLSource,
    finish_reason_of,
)
from broker.wire.messages import (
    Usage as AnthropicUsage,
)
from broker.wire.reasoning import budget_for
from workers.providers.anthropic_wire import error_decoder, response_decoder

JSON_TOOL = "json_response"
JSON_FORMATS = ("json_object", "json_schema")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def json_mode(req: ChatRequest) -> bool:
    return isinstance(req.response_format, dict) and req.response_format.get("type") in JSON_FORMATS


# ---------------------------------------------------------------- request


def to_anthropic(req: ChatRequest, *, model: str, default_max_tokens: int, stream: bool) -> MessagesRequest:
    if isinstance(req.n, int) and req.n > 1:
        raise InvalidRequest("this model returns one choice per request: `n` must be 1", param="n")
    system, turns = _turns(req.messages)
    out = MessagesRequest(model=model, max_tokens=req.output_limit() or default_max_tokens, messages=turns)
    if system:
        out.system = system
    if isinstance(req.stop, str):
        out.stop_sequences = [req.stop]
    elif isinstance(req.stop, list) and req.stop:
        out.stop_sequences = req.stop
    if isinstance(req.temperature, (int, float)):
        out.temperature = min(float(req.temperature), 1.0)  # Anthropic's range is 0–1; its own OpenAI layer caps too
    if isinstance(req.top_p, (int, float)):
        out.top_p = req.top_p
    if isinstance(req.top_k, int):
        out.top_k = req.top_k
    user = req.user if isinstance(req.user, str) else req.safety_identifier
    if isinstance(user, str) and user:
        out.metadata = Metadata(user)
    _tools(req, out)
    _thinking(req, out)
    if stream:
        out.stream = True
    return out


def _thinking(req: ChatRequest, out: MessagesRequest) -> None:
    """reasoning_effort → a thinking budget (broker/wire/reasoning.py). Anthropic counts it inside
    max_tokens, so the answer's own limit is kept on top of it; thinking takes neither sampling changes
    nor a forced tool (https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking)."""
    budget = budget_for(req.reasoning_effort)
    forced = isinstance(out.tool_choice, ToolChoice) and out.tool_choice.type in ("any", "tool")
    if not budget or forced:
        return
    out.thinking = ThinkingConfig(type="enabled", budget_tokens=budget)
    out.max_tokens += budget
    out.temperature = out.top_p = out.top_k = UNSET


def _tools(req: ChatRequest, out: MessagesRequest) -> None:
    tools = [Tool(t.function.name, t.function.parameters or {"type": "object", "properties": {}},
                     description=t.function.description,
                     strict=t.function.strict if isinstance(t.function.strict, bool) else UNSET)
             for t in req.tools or []]
    choice = _tool_choice(req.tool_choice) if tools else None
    if json_mode(req):
        assert isinstance(req.response_format, dict)
        if not tools or (choice is not None and choice.type == "none"):
            # One call exactly: two JSON objects back to back would not parse as one.
            choice = ToolChoice("tool", name=JSON_TOOL, disable_parallel_tool_use=True)
        elif choice is None or choice.type != "tool":
            choice = ToolChoice("any")  # a real tool call, or the JSON answer: never free text
        tools.append(_json_tool(req.response_format))
    if req.parallel_tool_calls is False and tools:
        choice = choice or ToolChoice("auto")
        if choice.type != "none":
            choice.disable_parallel_tool_use = True
    if tools:
        out.tools = tools
    if choice is not None:
        out.tool_choice = choice


def _tool_choice(value: object) -> ToolChoice | None:
    if value is UNSET:
        return None
    if value == "auto":
        return ToolChoice("auto")
    if value == "none":
        return ToolChoice("none")
    if value == "required":
        return ToolChoice("any")
    if isinstance(value, dict) and isinstance(name := (value.get("function") or {}).get("name"), str):
        return ToolChoice("tool", name=name)
    raise InvalidRequest(f"unsupported tool_choice {value!r}", param="tool_choice")


def _json_tool(response_format: dict[str, Any]) -> Tool:
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema") or {"type": "object"}
    description = spec.get("description") or "Respond with a JSON object: the whole answer goes in this call."
    return Tool(JSON_TOOL, schema, description=description)


def _turns(messages: list[Message]) -> tuple[str, list[Turn]]:
    """System text, and user/assistant turns with consecutive same-role messages merged.

    Merging is what makes parallel tool results legal: OpenAI sends one `tool`
    message per call, Anthropic wants all of a turn's `tool_result`s in the
    single user message that follows it, ahead of any text.
    """
    system: list[str] = []
    turns: list[tuple[str, list[ContentBlock]]] = []
    for i, m in enumerate(messages):
        if m.role in ("system", "developer"):
            system.append(m.text())
            continue
        if m.role == "function":
            raise InvalidRequest("legacy `function` messages are not supported: use tools",
                                 param=f"messages[{i}].role")
        role = "assistant" if m.role == "assistant" else "user"
        blocks = _blocks(m, i)
        if not blocks and role == "assistant":
            continue  # an empty assistant turn says nothing, and the API rejects empty content
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    return "\n".join(s for s in system if s), [_turn(role, blocks) for role, blocks in turns]


def _turn(role: str, blocks: list[ContentBlock]) -> Turn:
    if role == "user":
        blocks = sorted(blocks, key=lambda b: not isinstance(b, ToolResultBlock))  # stable: results first
    if len(blocks) == 1 and isinstance(blocks[0], TextBlock):
        return Turn("user" if role == "user" else "assistant", blocks[0].text)
    return Turn("user" if role == "user" else "assistant", blocks)


def _blocks(m: Message, i: int) -> list[ContentBlock]:
    if m.role == "tool":
        assert isinstance(m.tool_call_id, str)
        content = _content(m.content, i)
        if all(isinstance(b, TextBlock) for b in content):
            text = "".join(b.text for b in content if isinstance(b, TextBlock))
            return [ToolResultBlock(m.tool_call_id, text or UNSET)]
        return [ToolResultBlock(m.tool_call_id, [b for b in content if isinstance(b, (TextBlock, ImageBlock))])]
    blocks: list[ContentBlock] = list(_content(m.content, i))
    for j, call in enumerate(m.tool_calls or []):
        blocks.append(ToolUseBlock(call.id, call.function.name, _arguments(call.function.arguments,
                                                                          f"messages[{i}].tool_calls[{j}]")))
    return blocks


def _content(content: str | list[ContentPart] | None, i: int) -> list[TextBlock | ImageBlock]:
    # Empty text blocks are rejected by the API ("text content blocks must be non-empty").
    if content is None or isinstance(content, str):
        return [TextBlock(content)] if content else []
    out: list[TextBlock | ImageBlock] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            out.extend([TextBlock(part.text)] if part.text else [])
        elif isinstance(part, RefusalPart):
            out.extend([TextBlock(part.refusal)] if part.refusal else [])
        elif isinstance(part, ImageUrlPart):
            out.append(_image(part.image_url.url, f"messages[{i}].content[{j}]"))
        else:
            raise InvalidRequest(f"content parts of type {type(part).__struct_config__.tag!r} are not "
                                 "supported by this model", param=f"messages[{i}].content[{j}]")
    return out


def _image(url: str, param: str) -> ImageBlock:
    if url.startswith(("http://", "https://")):
        return ImageBlock(URLSource(url))
    header, sep, data = url.partition(",")
    media_type = header.removeprefix("data:").removesuffix(";base64")
    if not (header.startswith("data:") and header.endswith(";base64") and sep and data):
        raise InvalidRequest("image_url must be an http(s) URL or a base64 data URL", param=param)
    if media_type not in IMAGE_TYPES:
        raise InvalidRequest(f"unsupported image type {media_type!r}: use one of {', '.join(IMAGE_TYPES)}",
                             param=param)
    return ImageBlock(Base64Source(media_type, data))


def _arguments(arguments: str, param: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        raise InvalidRequest("tool call arguments are not valid JSON", param=f"{param}.function.arguments") from None
    if not isinstance(value, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", param=f"{param}.function.arguments")
    return value


# ---------------------------------------------------------------- response


def from_anthropic(body: bytes, *, json_mode: bool = False, created: int | None = None) -> ChatCompletion:
    try:
        msg = response_decoder.decode(body)
    except Exception as exc:  # msgspec.DecodeError or ValidationError: either way the upstream broke protocol
        raise UpstreamError(f"upstream returned an invalid message: {exc}", retryable=True) from None
    texts: list[str] = []
    calls: list[ToolCall] = []
    answered_json = False
    for block in msg.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use" and json_mode and block.name == JSON_TOOL:
            texts.append(bytes(block.input).decode())
            answered_json = True
        elif block.type == "tool_use":
            calls.append(ToolCall(block.id, FunctionCall(block.name, bytes(block.input).decode())))
        # thinking / redacted_thinking / server-tool blocks have no OpenAI equivalent: dropped.
    finish = finish_reason_of(msg.stop_reason)
    if answered_json and not calls:
        finish = "stop"
    message = ResponseMessage(content="".join(texts) if texts else None, tool_calls=calls or UNSET)
    return ChatCompletion(id=msg.id, created=int(time.time()) if created is None else created, model=msg.model,
                          choices=[Choice(0, message, finish)], usage=msg.usage.to_chat())


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """An Anthropic error body (`{"type":"error","error":{"type","message"}}`) → UpstreamError."""
    message, kind = f"upstream returned HTTP {status}", None
    try:
        detail = error_decoder.decode(body).error
        if detail is not None:
            message, kind = detail.message or message, detail.type
    except Exception:  # not JSON (a proxy's HTML page): the status alone must do
        pass
    retry_after: float | None = None
    try:
        retry_after = float(headers["retry-after"]) if headers.get("retry-after") else None
    except ValueError:
        pass
    code = "rate_limit_exceeded" if status == 429 else None
    text = f"upstream error ({status}{', ' + kind if kind else ''}): {redact(message)}"
    return UpstreamError.for_status(status, text, code=code, retry_after_s=retry_after)


def map_usage(u: AnthropicUsage) -> Usage:
    """Anthropic's usage as Chat counts it (the ledger prices both the same way)."""
    return u.to_chat()
