"""OpenAI Chat Completions wire Structs for the fake upstream (https://platform.openai.com/docs/api-reference/chat).

Requests declare only the fields the fake reads (lenient: unknown fields are ignored).
Responses follow the field order of recorded OpenAI payloads; UNSET fields are left out
of the JSON, which is how a delta carries `role` only in its first chunk.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

FINGERPRINT = "fp_fake"


class _FunctionName(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct):
    function: _FunctionName
    type: str = "function"


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _CalledFunction(msgspec.Struct):
    name: str
    arguments: str


class _CallIn(msgspec.Struct):
    """An assistant message's earlier tool call, as the client sends it back."""

    id: str
    function: _CalledFunction
    type: str = "function"


class InMessage(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[_CallIn] | None = None
    tool_call_id: str | None = None


class FunctionDef(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class ToolDef(msgspec.Struct):
    function: FunctionDef
    type: str = "function"


class JsonSchemaFormat(msgspec.Struct):
    name: str  # required by OpenAI, as is the schema in practice
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct):
    type: str  # text | json_object | json_schema
    json_schema: JsonSchemaFormat | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[InMessage]
    stream: bool = False
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[ToolDef] | None = None
    tool_choice: str | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


class Function(msgspec.Struct):
    name: str | UnsetType = UNSET
    arguments: str = ""


class ToolCall(msgspec.Struct):
    index: int | UnsetType = UNSET  # stream deltas only
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: Function | UnsetType = UNSET


class Message(msgspec.Struct):
    role: str
    content: str | None
    refusal: None = None
    annotations: list[Any] = []
    tool_calls: list[ToolCall] | UnsetType = UNSET


class Choice(msgspec.Struct):
    index: int
    message: Message
    logprobs: None = None
    finish_reason: str = "stop"


class _PromptDetails(msgspec.Struct):
    cached_tokens: int = 0
    audio_tokens: int = 0


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int = 0
    audio_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: _PromptDetails = msgspec.field(default_factory=_PromptDetails)
    completion_tokens_details: _CompletionDetails = msgspec.field(
        default_factory=_CompletionDetails)


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    service_tier: str = "default"
    system_fingerprint: str = FINGERPRINT


class Delta(msgspec.Struct):
    role: str | UnsetType = UNSET  # first chunk only: the SDK accumulator concatenates strings
    content: str | None | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET
    refusal: None | UnsetType = UNSET


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class ChatChunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    service_tier: str = "default"
    system_fingerprint: str = FINGERPRINT
    choices: list[ChunkChoice]
    # OpenAI sends "usage": null on every chunk once include_usage is on; absent otherwise.
    usage: Usage | None | UnsetType = UNSET
