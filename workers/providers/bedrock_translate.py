"""OpenAI Chat Completions → Bedrock Converse, and back: pure functions, no I/O.

From https://platform.openai.com/docs/api-reference/chat/create to
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html. Choices the
protocols leave to us:
- Converse wants turns that alternate, starting with a user turn: consecutive messages of one role
  are merged, and `tool` messages become `toolResult` blocks of the user turn that follows the calls,
  ahead of any text (Claude requires that order; the others accept it).
- System and developer messages become `system` blocks.
- Images go as bytes: Converse has no image URL (only bytes or an S3 location), and fetching client
  URLs from a worker would let any client make the deployment fetch any address. Routing keeps
  URL images away from this provider (`image_urls: false`); here they are the client's 400.
- `reasoning_effort` turns on Claude's extended thinking through `additionalModelRequestFields`
  (https://docs.aws.amazon.com/bedrock/latest/userguide/claude-messages-extended-thinking.html);
  other model families have no such field, so it is ignored for them, as sampling options Converse
  lacks (penalties, seed) are.
"""

from __future__ import annotations

import binascii
import json
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from broker.errors import InvalidRequest, UpstreamError
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
from broker.wire.reasoning import budget_for
from workers.providers import bedrock_wire as w

# Converse's image formats (ImageBlock.format), by the data URL's media type.
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}
# The answer Claude may give when thinking and no limit was asked for (its budget is added on top).
THINKING_ANSWER_TOKENS = 4096
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
           "model_context_window_exceeded": "length", "tool_use": "tool_calls",
           "content_filtered": "content_filter", "guardrail_intervened": "content_filter"}

# ---------------------------------------------------------------- request


def to_upstream(req: ChatRequest, *, model: str) -> bytes:
    if isinstance(req.n, int) and req.n > 1:
        raise InvalidRequest("Bedrock returns one choice per request: `n` must be 1", param="n")
    system, messages = _messages(req.messages)
    body = w.ConverseRequest(messages=messages, system=system or UNSET, tool_config=_tool_config(req, messages))
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    config = w.InferenceConfig(
        max_tokens=_given(req.output_limit()), temperature=_given(req.temperature), top_p=_given(req.top_p),
        stop_sequences=stop if isinstance(stop, list) and stop else UNSET,
    )
    _thinking(req, model, body, config)
    if msgspec.json.encode(config) != b"{}":
        body.inference_config = config
    return w.encoder.encode(body)


def _given(value: Any) -> Any:
    return UNSET if value is None else value


def _thinking(req: ChatRequest, model: str, body: w.ConverseRequest, config: w.InferenceConfig) -> None:
    """Claude thinks within maxTokens, so the answer's own limit is kept on top of the budget; thinking
    takes no sampling changes and no forced tool (as on Anthropic's own API: anthropic_translate.py)."""
    budget = budget_for(req.reasoning_effort)
    forced = isinstance(body.tool_config, w.ToolConfig) and isinstance(body.tool_config.tool_choice, w.ToolChoice) \
        and body.tool_config.tool_choice.auto is UNSET
    if not budget or forced or "anthropic.claude" not in model:
        return
    body.additional_model_request_fields = {"thinking": {"type": "enabled", "budget_tokens": budget}}
    config.max_tokens = (req.output_limit() or THINKING_ANSWER_TOKENS) + budget
    config.temperature = config.top_p = UNSET


def _messages(messages: list[Message]) -> tuple[list[w.SystemBlock], list[w.Message]]:
    system: list[w.SystemBlock] = []
    turns: list[w.Message] = []
    for i, m in enumerate(messages):
        if m.role in ("system", "developer"):
            if text := m.text():
                system.append(w.SystemBlock(text=text))
            continue
        if m.role == "function":
            raise InvalidRequest("legacy `function` messages are not supported: use tools", param=f"messages[{i}].role")
        role = "assistant" if m.role == "assistant" else "user"
        blocks = _tool_result(m) if m.role == "tool" else _content(m.content, i)
        if role == "assistant":
            blocks += _tool_uses(m, i)
            if not blocks:
                continue  # an empty assistant turn says nothing, and Converse rejects empty content
        if turns and turns[-1].role == role:
            turns[-1].content.extend(blocks)
        else:
            turns.append(w.Message(role=role, content=blocks))
    for turn in turns:
        if turn.role == "user":  # stable: the results first, in the order of the calls they answer
            turn.content.sort(key=lambda b: b.tool_result is UNSET)
    return system, turns


def _content(content: str | list[ContentPart] | None, i: int) -> list[w.ContentBlock]:
    if content is None or isinstance(content, str):
        return [w.ContentBlock(text=content)] if content else []
    blocks: list[w.ContentBlock] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            blocks += [w.ContentBlock(text=part.text)] if part.text else []
        elif isinstance(part, RefusalPart):
            blocks += [w.ContentBlock(text=part.refusal)] if part.refusal else []
        elif isinstance(part, ImageUrlPart):
            blocks.append(w.ContentBlock(image=_image(part.image_url.url, f"messages[{i}].content[{j}].image_url.url")))
        else:
            raise InvalidRequest(f"content parts of type {type(part).__struct_config__.tag!r} are not supported "
                                 "by Bedrock's Converse API here", param=f"messages[{i}].content[{j}]")
    return blocks


def _image(url: str, param: str) -> w.Image:
    if not url.startswith("data:"):
        raise InvalidRequest("Bedrock takes images only inline: send the image as a data:<type>;base64,... URL",
                             param=param)
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding != "base64" or not data:
        raise InvalidRequest("data URLs must look like data:<mime type>;base64,<data>", param=param)
    if media_type not in IMAGE_FORMATS:
        raise InvalidRequest(f"unsupported image type {media_type!r}: use one of png, jpeg, gif, webp", param=param)
    try:
        binascii.a2b_base64(data)
    except binascii.Error:
        raise InvalidRequest("the data URL is not valid base64", param=param) from None
    return w.Image(format=IMAGE_FORMATS[media_type], source=w.ImageSource(data=data))


def _tool_result(m: Message) -> list[w.ContentBlock]:
    assert isinstance(m.tool_call_id, str)  # Message.__post_init__ requires it of tool messages
    text = m.text()
    content = [w.ToolResultContent(text=text)] if text else []
    return [w.ContentBlock(tool_result=w.ToolResult(tool_use_id=m.tool_call_id, content=content))]


def _tool_uses(m: Message, i: int) -> list[w.ContentBlock]:
    calls = m.tool_calls if isinstance(m.tool_calls, list) else []
    return [w.ContentBlock(tool_use=w.ToolUse(tool_use_id=call.id, name=call.function.name,
                                              input=_arguments(call.function.arguments, i, k)))
            for k, call in enumerate(calls)]


def _arguments(arguments: str, i: int, k: int) -> dict[str, Any]:
    param = f"messages[{i}].tool_calls[{k}].function.arguments"
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        raise InvalidRequest("tool call arguments are not valid JSON", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", param=param)
    return value


def _tool_config(req: ChatRequest, messages: list[w.Message]) -> w.ToolConfig | UnsetType:
    tools = [w.Tool(tool_spec=w.ToolSpec(
        name=t.function.name, description=t.function.description or UNSET,
        input_schema=w.InputSchema(json=t.function.parameters or {"type": "object", "properties": {}}),
    )) for t in req.tools or []]
    choice = req.tool_choice
    if not tools:
        return UNSET
    if choice == "none":
        # Converse has no "none". Without tools the model cannot call one, but a conversation that
        # holds toolUse / toolResult blocks must still declare them (Bedrock's ValidationException).
        if not any(b.tool_use is not UNSET or b.tool_result is not UNSET for m in messages for b in m.content):
            return UNSET
        return w.ToolConfig(tools=tools)
    if choice == "required":
        return w.ToolConfig(tools=tools, tool_choice=w.ToolChoice(any={}))
    if isinstance(choice, dict) and isinstance(name := (choice.get("function") or {}).get("name"), str):
        return w.ToolConfig(tools=tools, tool_choice=w.ToolChoice(tool=w.SpecificTool(name=name)))
    if choice in (UNSET, "auto"):
        return w.ToolConfig(tools=tools)  # auto is Converse's default, and the one every tool model takes
    raise InvalidRequest(f"unsupported tool_choice {choice!r}", param="tool_choice")


# ---------------------------------------------------------------- response


def from_upstream(data: bytes, *, model: str) -> ChatCompletion:
    try:
        resp = w.response_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"Bedrock sent an invalid response: {exc}", retryable=True) from None
    blocks = resp.output.message.content if resp.output.message else []
    text = "".join(b.text for b in blocks if b.text is not None)
    calls = [ToolCall(b.tool_use.tool_use_id, FunctionCall(b.tool_use.name, bytes(b.tool_use.input).decode()))
             for b in blocks if b.tool_use is not None]
    finish = finish_reason(resp.stop_reason)
    message = ResponseMessage(text if text or not calls or finish == "content_filter" else None,
                              tool_calls=calls or UNSET)
    return ChatCompletion("", 0, model, [Choice(0, message, finish)], usage(resp.usage))


def finish_reason(stop_reason: str) -> str:
    """Chat's finish_reason; a stop reason newer than this table reads as "stop": the answer did end."""
    return _FINISH.get(stop_reason, "stop")


def usage(u: w.TokenUsage | None) -> Usage | None:
    """Chat's prompt_tokens include cached tokens; Bedrock counts cache reads and writes apart."""
    if u is None:
        return None
    prompt = u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens
    return Usage(prompt, u.output_tokens, prompt + u.output_tokens, prompt_tokens_details={
        "cached_tokens": u.cache_read_input_tokens, "cache_write_tokens": u.cache_write_input_tokens})
