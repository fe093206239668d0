"""Anthropic Messages ⇄ Chat Completions: a Messages request served by a Chat provider.

From https://docs.anthropic.com/en/api/messages to https://platform.openai.com/docs/api-reference/chat/create
and back (the reverse of workers/providers/anthropic_translate.py). `to_chat` builds the
ChatRequest, `to_message` turns the ChatCompletion into a Message; streams: messages_stream.py.

What Chat cannot carry is refused with a 400 naming the field (server tools and server-side
blocks, which only Anthropic runs; documents by URL or Files API id; more than 4 stop sequences).
What it has no use for is dropped: thinking blocks (their signatures only Anthropic can check),
cache_control, top_k (OpenAI rejects it). `output_config.effort` is dropped too: Claude Code sends
it on every request, and models without reasoning (gpt-4o, ...) answer `reasoning_effort` with a 400.
"""

from __future__ import annotations

import json
import re

import msgspec
from msgspec import UNSET, UnsetType

from broker.errors import InvalidRequest
from broker.wire.chat import (
    FUNCTION_NAME,
    ChatCompletion,
    ChatRequest,
    ContentPart,
    FilePart,
    FunctionCall,
    FunctionDef,
    ImageUrl,
    ImageUrlPart,
    StreamOptions,
    TextPart,
    ToolCall,
)
from broker.wire.chat import Message as ChatMessage
from broker.wire.chat import Tool as ChatTool
from broker.wire.messages import (
    Base64Source,
    ContentBlock,
    ContentSource,
    DocumentBlock,
    ImageBlock,
    Message,
    MessagesRequest,
    PlainTextSource,
    RedactedThinkingBlock,
    ResponseBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolResultContent,
    ToolUseBlock,
    Turn,
    URLSource,
    Usage,
    encoder,
    stop_reason_of,
)
from broker.wire.reasoning import effort_for

MAX_STOP = 4  # Chat's limit on `stop`
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


# ---------------------------------------------------------------- request


def to_chat(req: MessagesRequest) -> ChatRequest:
    """The Chat request for a Messages request, `model` still the client's name; what Chat cannot
    carry raises InvalidRequest whose `param` is the field's path (`messages[2].content[0]`)."""
    if req.max_tokens == 0:
        raise InvalidRequest("max_tokens 0 only warms Anthropic's prompt cache: this model needs at least 1",
                             param="max_tokens")
    messages = _system(req.system)
    for i, turn in enumerate(req.messages):
        messages.extend(_turn(turn, f"messages[{i}].content"))
    out = ChatRequest(model=req.model, messages=messages, max_completion_tokens=req.max_tokens,
                      temperature=req.temperature, top_p=req.top_p)
    if req.stream is True:
        out.stream = True
        out.stream_options = StreamOptions(include_usage=True)  # message_delta reports the final usage
    if req.stop_sequences:
        if len(req.stop_sequences) > MAX_STOP:
            raise InvalidRequest(f"this model takes at most {MAX_STOP} stop sequences", param="stop_sequences")
        out.stop = req.stop_sequences
    if req.metadata and req.metadata.user_id:
        out.safety_identifier = req.metadata.user_id  # Chat's successor of `user`, for abuse detection
    _tools(req, out)
    budget = req.thinking.budget_tokens if req.thinking and req.thinking.type == "enabled" else UNSET
    if isinstance(budget, int):
        out.reasoning_effort = effort_for(budget)  # thinking.budget_tokens → its level (broker/wire/reasoning.py)
    if req.output_config and req.output_config.format:
        if req.output_config.format.type != "json_schema" or req.output_config.format.schema is UNSET:
            raise InvalidRequest("output_config.format must be a json_schema with a `schema`",
                                 param="output_config.format")
        out.response_format = {"type": "json_schema",
                               "json_schema": {"name": "output", "schema": req.output_config.format.schema}}
    return out


def _system(system: str | list[TextBlock] | UnsetType) -> list[ChatMessage]:
    text = system if isinstance(system, str) else "\n".join(b.text for b in system or [])
    return [ChatMessage(role="system", content=text)] if text else []


def _turn(turn: Turn, where: str) -> list[ChatMessage]:
    if isinstance(turn.content, str):
        return [ChatMessage(role=turn.role, content=turn.content)]
    if turn.role == "assistant":
        return _assistant(turn.content, where)
    if turn.role == "system":
        return [ChatMessage(role="system", content="\n".join(_texts(turn.content, where)))]
    return _user(turn.content, where)


def _user(blocks: list[ContentBlock], where: str) -> list[ChatMessage]:
    """Tool results become `tool` messages, in order, ahead of the rest of the turn (Chat wants them
    right after the assistant's calls); what else the turn holds, and any image or document a
    result returned (a tool message carries text only), follows as one user message."""
    results: list[ChatMessage] = []
    returned: list[ContentPart] = []
    parts: list[ContentPart] = []
    for j, block in enumerate(blocks):
        if isinstance(block, ToolResultBlock):
            text, media = _tool_result(block, f"{where}[{j}]")
            results.append(ChatMessage(role="tool", tool_call_id=block.tool_use_id, content=text))
            returned.extend(media)
        elif not isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            parts.extend(_parts(block, f"{where}[{j}]"))
    parts = returned + parts
    if not parts:
        return results
    if len(parts) == 1 and isinstance(parts[0], TextPart):
        return [*results, ChatMessage(role="user", content=parts[0].text)]
    return [*results, ChatMessage(role="user", content=parts)]


def _tool_result(block: ToolResultBlock, where: str) -> tuple[str, list[ContentPart]]:
    texts: list[str] = []
    media: list[ContentPart] = []
    if isinstance(block.content, str):
        texts.append(block.content)
    elif isinstance(block.content, list):
        for k, item in enumerate(block.content):
            for part in _parts(item, f"{where}.content[{k}]"):
                if isinstance(part, TextPart):
                    texts.append(part.text)
                else:
                    media.append(part)
    text = "\n".join(texts)
    # Chat has no is_error: say it in the content, where the model will read it.
    return (f"Error: {text}" if text else "Error") if block.is_error is True else text, media


def _assistant(blocks: list[ContentBlock], where: str) -> list[ChatMessage]:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(blocks):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(ToolCall(block.id, FunctionCall(block.name, encoder.encode(block.input).decode())))
        elif not isinstance(block, ThinkingBlock | RedactedThinkingBlock):
            raise InvalidRequest(f"{_kind(block)} blocks cannot be sent to this model in an assistant turn",
                                 param=f"{where}[{j}]")
    text = "\n".join(t for t in texts if t)
    if not text and not calls:
        return []  # only thinking: nothing this model can read
    return [ChatMessage(role="assistant", content=text or None, tool_calls=calls or UNSET)]


def _texts(blocks: list[ContentBlock], where: str) -> list[str]:
    for j, block in enumerate(blocks):
        if not isinstance(block, TextBlock):
            raise InvalidRequest(f"a system message takes text blocks only, not {_kind(block)}",
                                 param=f"{where}[{j}]")
    return [b.text for b in blocks if isinstance(b, TextBlock)]


def _parts(block: ContentBlock | ToolResultContent, where: str) -> list[ContentPart]:
    if isinstance(block, TextBlock):
        return [TextPart(block.text)]
    if isinstance(block, ImageBlock) and isinstance(block.source, Base64Source):
        return [ImageUrlPart(ImageUrl(f"data:{block.source.media_type};base64,{block.source.data}"))]
    if isinstance(block, ImageBlock) and isinstance(block.source, URLSource):
        return [ImageUrlPart(ImageUrl(block.source.url))]
    if isinstance(block, DocumentBlock):
        return _document(block, where)
    if isinstance(block, ImageBlock):
        raise InvalidRequest("images from Anthropic's Files API cannot be read by this model: send them as "
                             "base64 or by URL", param=f"{where}.source")
    if isinstance(block, ToolUseBlock):
        raise InvalidRequest("tool_use blocks belong in assistant turns", param=where)
    raise InvalidRequest(f"{_kind(block)} blocks are Anthropic's server-side content: this model cannot read "
                         "them", param=where)


def _document(block: DocumentBlock, where: str) -> list[ContentPart]:
    source = block.source
    if isinstance(source, PlainTextSource):
        return [TextPart(source.data)]
    if isinstance(source, ContentSource):
        if isinstance(source.content, str):
            return [TextPart(source.content)]
        return [p for k, item in enumerate(source.content) for p in _parts(item, f"{where}.source.content[{k}]")]
    if isinstance(source, Base64Source) and source.media_type == "application/pdf":
        filename = block.title if isinstance(block.title, str) and block.title else "document.pdf"
        return [FilePart({"filename": filename, "file_data": f"data:application/pdf;base64,{source.data}"})]
    raise InvalidRequest("this model reads documents as base64 PDF or text only", param=f"{where}.source")


def _tools(req: MessagesRequest, out: ChatRequest) -> None:
    if not req.tools:
        return  # tool_choice alone means nothing, and Chat refuses it without tools
    tools: list[ChatTool] = []
    for i, tool in enumerate(req.tools):
        if not tool.is_custom():
            raise InvalidRequest(f"{tool.name!r} is an Anthropic server tool ({tool.type}), run on Anthropic's "
                                 "servers only: this model cannot use it", param=f"tools[{i}]")
        if not re.match(FUNCTION_NAME, tool.name):
            raise InvalidRequest("this model's tool names are 1 to 64 of a-z, A-Z, 0-9, _ and -",
                                 param=f"tools[{i}].name")
        tools.append(ChatTool(FunctionDef(tool.name, description=tool.description, parameters=tool.input_schema,
                                          strict=tool.strict)))
    out.tools = tools
    choice = req.tool_choice
    if not choice:
        return
    if choice.type == "tool":
        out.tool_choice = {"type": "function", "function": {"name": choice.name}}
    else:
        out.tool_choice = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use is True and choice.type != "none":
        out.parallel_tool_calls = False


def _kind(block: msgspec.Struct) -> str:
    return str(block.__struct_config__.tag)


# ---------------------------------------------------------------- response


def to_message(result: ChatCompletion, *, model: str, message_id: str) -> Message:
    """`model` is the name the client asked for; `message_id` a `msg_…` id (the prefix is added if missing)."""
    message_id = msg_id(message_id)
    content: list[ResponseBlock] = []
    finish: str | None = None
    refused = False
    if result.choices:
        choice = result.choices[0]
        finish = choice.finish_reason
        refused = bool(choice.message.refusal) and not choice.message.content
        content.extend(TextBlock(t) for t in (choice.message.content, choice.message.refusal) if t)
        for k, call in enumerate(choice.message.tool_calls or []):
            content.append(ToolUseBlock(tool_use_id(call.id, message_id, k), call.function.name,
                                        tool_input(call.function.arguments)))
    stop = stop_reason(finish, tool_used=any(isinstance(b, ToolUseBlock) for b in content), refused=refused)
    usage = Usage.from_chat(result.usage) if result.usage else Usage(0, 0, 0, 0)
    return Message(message_id, model, content, usage, stop_reason=stop)


def stop_reason(finish_reason: str | None, *, tool_used: bool, refused: bool = False) -> str:
    """Some servers finish tool calls with "stop", and OpenAI a refusal: Anthropic says what happened."""
    stop = stop_reason_of(finish_reason)
    if stop == "end_turn" and tool_used:
        return "tool_use"
    return "refusal" if stop == "end_turn" and refused else stop


def msg_id(message_id: str) -> str:
    return message_id if message_id.startswith("msg_") else f"msg_{message_id}"


def tool_use_id(call_id: str, message_id: str, k: int) -> str:
    """The call's id in the characters Anthropic's ids use; minted from the message's id if none came."""
    return _NOT_ID.sub("_", call_id) or f"toolu_{_NOT_ID.sub('_', message_id.removeprefix('msg_'))}_{k}"


def tool_input(arguments: str) -> dict[str, object]:
    """Chat's arguments are a JSON string, possibly invalid (cut off at max_tokens, or a weak model):
    Anthropic's `input` must be an object, so anything else becomes {} rather than a failed answer."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
