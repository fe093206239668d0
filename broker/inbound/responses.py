"""OpenAI Responses → Chat Completions: a Responses request served by a Chat provider.

From https://platform.openai.com/docs/api-reference/responses/create to
https://platform.openai.com/docs/api-reference/chat/create. `to_chat` builds the ChatRequest; the
answer goes back by responses_output.py (`to_response`), or by responses_stream.py when streamed.

What Chat cannot carry is refused with a 400 naming the field: built-in tools (web_search,
file_search, mcp, ...: OpenAI runs them, not the model), item references and stored prompts or
conversations (the caller resolves `previous_response_id` into `history`; nothing else is stored),
files and images by OpenAI file id or by file URL. What it has no use for is dropped: reasoning
items (their `encrypted_content` only OpenAI can read), `store`, `metadata`, `include`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from msgspec import UNSET

from broker.errors import InvalidRequest
from broker.wire.chat import (
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
from broker.wire.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputFile,
    InputImage,
    AnyItem,
    ForeignItem,
    InputPart,
    InputText,
    ItemReference,
    MessageItem,
    OutputPart,
    OutputText,
    ReasoningItem,
    Refusal,
    ResponsesRequest,
    ToolChoiceObject,
)


def to_chat(req: ResponsesRequest, history: Sequence[AnyItem] = ()) -> ChatRequest:
    """The Chat request for a Responses request, `model` still the client's name. `history` is the
    earlier turns' items (inputs and outputs, from `previous_response_id`), resolved by the caller.
    What Chat cannot carry raises InvalidRequest whose `param` is the field's path (`input[2].content[0]`)."""
    for field in ("conversation", "prompt"):
        if getattr(req, field) not in (UNSET, None):
            raise InvalidRequest(f"`{field}` refers to state stored at OpenAI: send the items as `input`, or use "
                                 "`previous_response_id`", param=field)
    turns = _Turns()
    turns.add(history, lambda i: "previous_response_id")
    turns.add(req.items(), lambda i: f"input[{i}]")
    if not turns.messages:
        raise InvalidRequest("`input` is required: there is nothing to answer", param="input")
    system = [ChatMessage(role="system", content=req.instructions)] if req.instructions else []
    out = ChatRequest(model=req.model, messages=system + turns.messages, temperature=req.temperature,
                      top_p=req.top_p, max_completion_tokens=req.max_output_tokens, user=req.user,
                      safety_identifier=req.safety_identifier, prompt_cache_key=req.prompt_cache_key or UNSET)
    if req.stream is True:
        out.stream = True
        out.stream_options = StreamOptions(include_usage=True)  # response.completed reports the final usage
    if isinstance(req.parallel_tool_calls, bool):
        out.parallel_tool_calls = req.parallel_tool_calls
    if req.reasoning and isinstance(req.reasoning.effort, str):
        out.reasoning_effort = req.reasoning.effort
    _text(req, out)
    _tools(req, out)
    return out


class _Turns:
    """Items → Chat messages, in order. A run of function calls joins the assistant message just
    before it (Chat's assistant turn holds its text and its tool calls), or makes one; each output
    becomes a tool message, and the images and files outputs returned (a tool message carries text
    only) follow the run of outputs as one user message: Chat wants tool messages right after the calls."""

    def __init__(self) -> None:
        self.messages: list[ChatMessage] = []
        self._returned: list[ContentPart] = []

    def add(self, items: Sequence[AnyItem], param: Callable[[int], str]) -> None:
        for i, item in enumerate(items):
            if not isinstance(item, FunctionCallOutputItem | ReasoningItem):
                self._flush()
            match item:
                case MessageItem():
                    self.messages.append(_message(item, param(i)))
                case FunctionCallItem():
                    self._call(ToolCall(item.call_id, FunctionCall(item.name, item.arguments)))
                case FunctionCallOutputItem():
                    self._output(item, param(i))
                case ItemReference():
                    raise InvalidRequest(f"item {item.id!r} is not known here: send the item itself",
                                         param=param(i))
                case ReasoningItem():
                    pass
                case ForeignItem():
                    raise InvalidRequest(f"{item.type!r} items are OpenAI's own (its servers run their tools): "
                                         "this model reads messages, function calls and their outputs",
                                         param=f"{param(i)}.type")
        self._flush()

    def _call(self, call: ToolCall) -> None:
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role == "assistant":
            last.tool_calls = [*(last.tool_calls or []), call]
        else:
            self.messages.append(ChatMessage(role="assistant", tool_calls=[call]))

    def _output(self, item: FunctionCallOutputItem, where: str) -> None:
        if isinstance(item.output, str):
            text = item.output
        else:
            parts = [_part(part, f"{where}.output[{k}]") for k, part in enumerate(item.output)]
            text = "\n".join(p.text for p in parts if isinstance(p, TextPart))
            self._returned += [p for p in parts if not isinstance(p, TextPart)]
        self.messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=text))

    def _flush(self) -> None:
        if self._returned:
            self.messages.append(ChatMessage(role="user", content=self._returned))
            self._returned = []


def _message(item: MessageItem, where: str) -> ChatMessage:
    if isinstance(item.content, str):
        return ChatMessage(role=_role(item.role), content=item.content)
    if item.role == "user":
        parts = [_part(part, f"{where}.content[{j}]") for j, part in enumerate(item.content)]
        if len(parts) == 1 and isinstance(parts[0], TextPart):
            return ChatMessage(role="user", content=parts[0].text)
        return ChatMessage(role="user", content=parts)
    texts: list[str] = []
    refusals: list[str] = []
    for j, part in enumerate(item.content):
        if isinstance(part, InputText | OutputText):
            texts.append(part.text)
        elif isinstance(part, Refusal) and item.role == "assistant":
            refusals.append(part.refusal)
        else:
            raise InvalidRequest(f"{item.role} messages take text only here, not {part.__struct_config__.tag}",
                                 param=f"{where}.content[{j}]")
    text = "".join(texts)
    if item.role != "assistant":
        return ChatMessage(role=_role(item.role), content=text)
    return ChatMessage(role="assistant", content=text or None, refusal="".join(refusals) or UNSET)


def _role(role: Literal["user", "system", "developer", "assistant"]) -> Literal["user", "system", "assistant"]:
    """Codex sends `developer` messages on every turn; many chat templates (vLLM's, Ollama's) know only
    `system`, which OpenAI still reads as the same thing."""
    return "system" if role == "developer" else role


def _part(part: InputPart | OutputPart, where: str) -> ContentPart:
    if isinstance(part, InputText | OutputText):
        return TextPart(part.text)
    if isinstance(part, InputImage) and part.image_url:
        # "original" (full resolution) is the Responses API's alone: Chat's nearest is "auto".
        detail = "auto" if part.detail == "original" else part.detail
        return ImageUrlPart(ImageUrl(part.image_url, detail))
    if isinstance(part, InputFile) and part.file_data:
        return FilePart({"file_data": part.file_data, "filename": part.filename or "file"})
    if isinstance(part, Refusal):
        raise InvalidRequest("refusal parts belong to assistant messages", param=where)
    raise InvalidRequest(f"this model reads {part.__struct_config__.tag} parts as inline data or, for images, "
                         "a URL: not by OpenAI file id or file URL", param=where)


def _text(req: ResponsesRequest, out: ChatRequest) -> None:
    if not req.text:
        return
    if isinstance(req.text.verbosity, str):
        out.verbosity = req.text.verbosity
    fmt = req.text.format
    if not fmt or fmt.type == "text":
        return
    if fmt.type == "json_object":
        out.response_format = {"type": "json_object"}
        return
    schema = {"name": fmt.name, "schema": fmt.schema, "strict": fmt.strict, "description": fmt.description}
    out.response_format = {"type": "json_schema",
                           "json_schema": {k: v for k, v in schema.items() if v not in (UNSET, None)}}


def _tools(req: ResponsesRequest, out: ChatRequest) -> None:
    if not req.tools:
        return  # tool_choice alone means nothing, and Chat refuses it without tools
    tools: dict[str, ChatTool] = {}
    for i, tool in enumerate(req.tools):
        if tool.type != "function" or not isinstance(tool.name, str):
            raise InvalidRequest(f"{tool.type!r} tools are run by OpenAI's servers: this model calls function "
                                 "tools only", param=f"tools[{i}].type")
        tools[tool.name] = ChatTool(FunctionDef(tool.name, description=tool.description or UNSET,
                                                parameters=tool.parameters or UNSET, strict=tool.strict))
    out.tools = list(tools.values())
    choice = req.tool_choice
    if isinstance(choice, str):
        out.tool_choice = choice
    elif isinstance(choice, ToolChoiceObject):
        _tool_choice(choice, tools, out)


def _tool_choice(choice: ToolChoiceObject, tools: dict[str, ChatTool], out: ChatRequest) -> None:
    if choice.type == "function":
        out.tool_choice = {"type": "function", "function": {"name": choice.name}}
    elif choice.type == "allowed_tools" and isinstance(choice.tools, list):
        # Chat has no such choice everywhere: offering only the allowed tools means the same, for this turn.
        allowed: list[ChatTool] = []
        for k, ref in enumerate(choice.tools):
            if ref.type != "function" or not isinstance(ref.name, str) or ref.name not in tools:
                raise InvalidRequest("allowed tools must name function tools of `tools`", param=f"tool_choice.tools[{k}]")
            allowed.append(tools[ref.name])
        out.tools = allowed
        out.tool_choice = choice.mode if isinstance(choice.mode, str) else "auto"
    else:
        raise InvalidRequest(f"tool_choice {choice.type!r} names a tool this model cannot call", param="tool_choice")
