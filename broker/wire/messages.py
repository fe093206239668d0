"""Anthropic Messages API wire types: request, content blocks, response, errors (events: messages_events.py).

One copy of the format, for both directions: clients calling our `POST /v1/messages`, and the
`anthropic` provider calling Anthropic (workers/providers/anthropic_wire.py keeps only the loose
decoders of what Anthropic sends back). Fields: https://docs.anthropic.com/en/api/messages and the
`anthropic` SDK's `src/anthropic/types/` (`message_create_params.py`, `message.py`).

Inbound bodies are lenient, as in chat.py: unknown fields are ignored (Claude Code sends fields
newer than any SDK), what we read is validated, optional fields default to UNSET and are left
out when encoding, because the API rejects null-valued optional fields as well as unknown ones.
Content blocks are a tagged union on `type`; the blocks only Anthropic's servers act on (server
tools, search results, ...) are recognised, fields unread, so a translation can refuse them by name.
A block type newer than this list fails to decode, and re-encoding drops every field not declared
here: code that forwards a client's body to Anthropic sends its bytes, and reads them with
`messages_envelope_decoder`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from broker.wire.chat import Int64, PositiveInt
from broker.wire.chat import Usage as ChatUsage

Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
UnitInterval = Annotated[float, Meta(ge=0, le=1)]


class Base(msgspec.Struct, omit_defaults=True):
    """Every request-side Struct: an UNSET field is not sent at all."""


class CacheControl(Base):
    type: str = "ephemeral"
    ttl: str | UnsetType = UNSET  # "5m" | "1h"


Cache = CacheControl | None | UnsetType

# ---------------------------------------------------------------- content blocks


class Block(Base, tag_field="type"):
    """A content block; each subclass names its `type`."""


class Base64Source(Base, tag_field="type", tag="base64"):
    media_type: str
    data: str


class URLSource(Base, tag_field="type", tag="url"):
    url: str


class FileSource(Base, tag_field="type", tag="file"):
    file_id: str  # Anthropic's Files API: readable by Anthropic only


class PlainTextSource(Base, tag_field="type", tag="text"):
    data: str
    media_type: str = "text/plain"


class ContentSource(Base, tag_field="type", tag="content"):
    content: str | list[TextBlock | ImageBlock]


class TextBlock(Block, tag="text"):
    text: str
    cache_control: Cache = UNSET


class ImageBlock(Block, tag="image"):
    source: Base64Source | URLSource | FileSource
    cache_control: Cache = UNSET


class DocumentBlock(Block, tag="document"):
    source: Base64Source | URLSource | FileSource | PlainTextSource | ContentSource
    title: str | None | UnsetType = UNSET
    cache_control: Cache = UNSET


class ToolUseBlock(Block, tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]  # an object, where Chat has a JSON string
    cache_control: Cache = UNSET


class ServerBlock(Block):
    """A block only Anthropic's API produces or reads (its server tools, search results, uploads)."""


class ServerToolUse(ServerBlock, tag="server_tool_use"): ...
class WebSearchToolResult(ServerBlock, tag="web_search_tool_result"): ...
class WebFetchToolResult(ServerBlock, tag="web_fetch_tool_result"): ...
class CodeExecutionToolResult(ServerBlock, tag="code_execution_tool_result"): ...
class BashCodeExecutionToolResult(ServerBlock, tag="bash_code_execution_tool_result"): ...
class TextEditorCodeExecutionToolResult(ServerBlock, tag="text_editor_code_execution_tool_result"): ...
class ToolSearchToolResult(ServerBlock, tag="tool_search_tool_result"): ...
class ContainerUpload(ServerBlock, tag="container_upload"): ...
class SearchResult(ServerBlock, tag="search_result"): ...
class ToolReference(ServerBlock, tag="tool_reference"): ...
class BrowserState(ServerBlock, tag="browser_state"): ...


ServerBlocks = (ServerToolUse | WebSearchToolResult | WebFetchToolResult | CodeExecutionToolResult
                | BashCodeExecutionToolResult | TextEditorCodeExecutionToolResult | ToolSearchToolResult
                | ContainerUpload | SearchResult | ToolReference | BrowserState)
ToolResultContent = TextBlock | ImageBlock | DocumentBlock | SearchResult | ToolReference | BrowserState


class ToolResultBlock(Block, tag="tool_result"):
    tool_use_id: str
    content: str | list[ToolResultContent] | UnsetType = UNSET
    is_error: bool | UnsetType = UNSET
    cache_control: Cache = UNSET


class ThinkingBlock(Block, tag="thinking"):
    thinking: str
    signature: str  # opaque: it must come back to Anthropic byte for byte


class RedactedThinkingBlock(Block, tag="redacted_thinking"):
    data: str


ContentBlock = (TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock
                | RedactedThinkingBlock | ServerBlocks)

# ---------------------------------------------------------------- request


class Turn(Base):
    """An input message. `system` turns are newer than the top-level `system` (SDK 2.x types them)."""

    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(Base):
    """A client tool (no `type`, or "custom"), or a server tool, which only Anthropic runs."""

    name: str
    input_schema: dict[str, Any] | UnsetType = UNSET  # a JSON Schema, passed through untouched
    description: str | UnsetType = UNSET
    type: str | None | UnsetType = UNSET  # "web_search_20250305", "bash_20250124", ...
    strict: bool | UnsetType = UNSET
    cache_control: Cache = UNSET

    def __post_init__(self) -> None:
        if self.is_custom() and self.input_schema is UNSET:
            raise ValueError("custom tools require `input_schema`")

    def is_custom(self) -> bool:
        return self.type in (UNSET, None, "custom")


class ToolChoice(Base):
    type: Literal["auto", "any", "tool", "none"]
    name: str | UnsetType = UNSET
    disable_parallel_tool_use: bool | UnsetType = UNSET  # not accepted on type "none"

    def __post_init__(self) -> None:
        if self.type == "tool" and self.name is UNSET:
            raise ValueError('tool_choice of type "tool" requires `name`')


class Metadata(Base):
    user_id: str | None | UnsetType = UNSET


class ThinkingConfig(Base):
    """`enabled` (with `budget_tokens`), `disabled`, `adaptive`, ...: the type stays a plain string."""

    type: str
    budget_tokens: PositiveInt | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.type == "enabled" and self.budget_tokens is UNSET:
            raise ValueError('thinking of type "enabled" requires `budget_tokens`')


class OutputFormat(Base):
    type: str  # "json_schema"
    schema: dict[str, Any] | UnsetType = UNSET


class OutputConfig(Base):
    effort: str | None | UnsetType = UNSET  # low | medium | high | xhigh | max
    format: OutputFormat | None | UnsetType = UNSET


class MessagesRequest(Base, kw_only=True):
    model: str
    max_tokens: Count  # required: the API has no default; 0 only warms Anthropic's prompt cache
    messages: Annotated[list[Turn], Meta(min_length=1)]
    system: str | list[TextBlock] | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    temperature: UnitInterval | UnsetType = UNSET
    top_p: UnitInterval | UnsetType = UNSET
    top_k: Count | UnsetType = UNSET
    stream: bool | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_choice: ToolChoice | UnsetType = UNSET
    thinking: ThinkingConfig | UnsetType = UNSET
    output_config: OutputConfig | UnsetType = UNSET


class CountTokensRequest(MessagesRequest, kw_only=True):
    """POST /v1/messages/count_tokens: a Messages request without `max_tokens` or `stream`
    (https://docs.anthropic.com/en/api/messages-count-tokens)."""

    max_tokens: Count = 1  # never sent here; the Chat form of the request needs one


class TokenCount(msgspec.Struct):
    input_tokens: int


class ModelInfo(msgspec.Struct, kw_only=True):
    """One model as `GET /v1/models` lists it to Anthropic's clients (https://docs.anthropic.com/en/api/models-list)."""

    id: str
    display_name: str
    created_at: str  # RFC 3339
    type: str = "model"
    lifecycle: str = "active"


class ModelInfoList(msgspec.Struct, kw_only=True):
    data: list[ModelInfo]
    has_more: bool = False
    first_id: str | None
    last_id: str | None


class MessagesEnvelope(msgspec.Struct):
    """The few fields routing and metering read, whatever blocks the body holds (for pass-through)."""

    model: str
    max_tokens: Count
    stream: bool = False
    metadata: Metadata | None = None


# ---------------------------------------------------------------- response


class Usage(msgspec.Struct, omit_defaults=True):
    """Token counts; None = not reported. Total input = input + cache creation + cache read tokens."""

    input_tokens: Int64 | None = None
    output_tokens: Int64 | None = None
    cache_creation_input_tokens: Int64 | None = None
    cache_read_input_tokens: Int64 | None = None

    def merged(self, update: Usage | None) -> Usage:
        """These counts updated by a later report's: message_delta's are cumulative and may leave some
        out, so the latest of each wins."""
        if update is None:
            return self
        changes = {name: value for name in update.__struct_fields__ if (value := getattr(update, name)) is not None}
        return msgspec.structs.replace(self, **changes)

    def to_chat(self) -> ChatUsage:
        """Chat's prompt_tokens includes cached tokens; Anthropic counts them apart from input_tokens."""
        cache_read, cache_write = self.cache_read_input_tokens or 0, self.cache_creation_input_tokens or 0
        prompt = (self.input_tokens or 0) + cache_read + cache_write
        completion = self.output_tokens or 0
        return ChatUsage(prompt, completion, prompt + completion,
                         prompt_tokens_details={"cached_tokens": cache_read, "cache_write_tokens": cache_write})

    @classmethod
    def from_chat(cls, usage: ChatUsage) -> Usage:
        """The inverse of `to_chat`: cached and cache-write tokens come out of `input_tokens`."""
        cache_read, cache_write = usage.prompt_detail("cached_tokens"), usage.prompt_detail("cache_write_tokens")
        return cls(input_tokens=max(usage.prompt_tokens - cache_read - cache_write, 0),
                   output_tokens=usage.completion_tokens,
                   cache_creation_input_tokens=cache_write, cache_read_input_tokens=cache_read)


ResponseBlock = TextBlock | ToolUseBlock | ThinkingBlock | RedactedThinkingBlock


class Message(msgspec.Struct, tag_field="type", tag="message"):
    # Not omit_defaults: a message always carries `stop_reason` and `stop_sequence`, null or not.
    id: str
    model: str
    content: list[ResponseBlock]
    usage: Usage
    role: str = "assistant"
    stop_reason: str | None = None
    stop_sequence: str | None = None


class ErrorDetail(msgspec.Struct):
    type: str = "api_error"  # invalid_request_error, authentication_error, rate_limit_error, overloaded_error, ...
    message: str = ""


class ErrorResponse(msgspec.Struct, tag_field="type", tag="error", omit_defaults=True):
    """An error body, and the `error` stream event: `{"type": "error", "error": {"type", "message"}}`."""

    error: ErrorDetail | None = None  # None only when decoding someone else's malformed body
    request_id: str | UnsetType = UNSET


# ---------------------------------------------------------------- Chat equivalents

# (stop_reason, finish_reason), read both ways: the first pair naming a value is its translation.
_REASONS = (
    ("end_turn", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
    ("stop_sequence", "stop"), ("pause_turn", "stop"), ("model_context_window_exceeded", "length"),
    ("tool_use", "function_call"),  # Chat's legacy name for a tool call
)
_TO_FINISH: dict[str, str] = {}
_TO_STOP: dict[str, str] = {}
for _stop, _finish in _REASONS:
    _TO_FINISH.setdefault(_stop, _finish)
    _TO_STOP.setdefault(_finish, _stop)


def finish_reason_of(stop_reason: str | None) -> str | None:
    """Chat's finish_reason for a stop_reason; one newer than the table reads as "stop": the answer did end."""
    return _TO_FINISH.get(stop_reason, "stop") if stop_reason is not None else None


def stop_reason_of(finish_reason: str | None) -> str:
    """The stop_reason for a Chat finish_reason; an unknown or missing one is a natural end."""
    return _TO_STOP.get(finish_reason or "", "end_turn")


# ---------------------------------------------------------------- codecs

# Built once: msgspec's encoders and decoders are cheapest reused (docs/perf-tips.rst).
encoder = msgspec.json.Encoder()
messages_request_decoder = msgspec.json.Decoder(MessagesRequest)
messages_envelope_decoder = msgspec.json.Decoder(MessagesEnvelope)
count_tokens_request_decoder = msgspec.json.Decoder(CountTokensRequest)
