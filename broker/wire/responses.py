"""OpenAI Responses API wire types: request, input and output items, the Response object (events: responses_events.py).

What clients send to our `POST /v1/responses` and what they read back. Fields:
https://platform.openai.com/docs/api-reference/responses and the `openai` SDK's
`src/openai/types/responses/` (`response_create_params.py`, `response_input_item_param.py`,
`response.py`, `response_output_item.py`).

Inbound bodies are lenient, as in chat.py: unknown fields are ignored, what we read is validated.
Items are a tagged union on `type`, but a message and an item reference may come without one (the
SDK's `EasyInputMessageParam`, `ItemReference`), which msgspec's tagged unions cannot decode; so
`input` decodes as plain objects and `ResponsesRequest.__post_init__` types them, naming the item's
path in any error. Item types only OpenAI's servers run (web_search_call, computer_call, ...) fail
there, by name. The same item Structs are the Response's `output`: a client replays them as the
next request's `input`, so one class serves both directions. Output-side Structs do not omit their
defaults: the SDK's models require `annotations`, `status`, `error`... present, null or empty.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from broker.wire.chat import FUNCTION_NAME, PositiveInt, Temperature

Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
UnitInterval = Annotated[float, Meta(ge=0, le=1)]
Status = Literal["in_progress", "completed", "incomplete"]


class Base(msgspec.Struct, omit_defaults=True):
    """Request-only Structs: an UNSET field is not echoed back."""


class Tagged(msgspec.Struct, tag_field="type", kw_only=True):
    """An item or content part: the JSON's `type` names it. UNSET fields are never encoded."""


# ---------------------------------------------------------------- content parts


class InputText(Tagged, tag="input_text"):
    text: str


class InputImage(Tagged, tag="input_image"):
    image_url: str | None | UnsetType = UNSET  # a URL or a data: URL
    file_id: str | None | UnsetType = UNSET  # OpenAI's Files API
    detail: str | UnsetType = UNSET  # low | high | auto | original


class InputFile(Tagged, tag="input_file"):
    file_data: str | None | UnsetType = UNSET  # a data: URL
    file_id: str | None | UnsetType = UNSET
    file_url: str | None | UnsetType = UNSET
    filename: str | None | UnsetType = UNSET


class OutputText(Tagged, tag="output_text"):
    text: str
    annotations: list[dict[str, Any]] = []  # url_citation, file_citation...: passed through


class Refusal(Tagged, tag="refusal"):
    refusal: str


class SummaryText(Tagged, tag="summary_text"):
    text: str


class ReasoningText(Tagged, tag="reasoning_text"):
    text: str


InputPart = InputText | InputImage | InputFile
OutputPart = OutputText | Refusal

# ---------------------------------------------------------------- items (input and output)


class MessageItem(Tagged, tag="message"):
    """A message: input (any role, text or parts) or output (assistant, with `id` and `status`)."""

    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputPart | OutputPart]
    id: str | UnsetType = UNSET
    status: Status | UnsetType = UNSET
    phase: str | None | UnsetType = UNSET  # commentary | final_answer: a client replays it unchanged


class FunctionCallItem(Tagged, tag="function_call"):
    call_id: str  # the id the tool's output answers to; ours is the upstream's tool call id
    name: str
    arguments: str  # a JSON string, as the model wrote it
    id: str | UnsetType = UNSET
    status: Status | UnsetType = UNSET


class FunctionCallOutputItem(Tagged, tag="function_call_output"):
    call_id: str
    output: str | list[InputPart]
    id: str | None | UnsetType = UNSET
    status: Status | None | UnsetType = UNSET


class ReasoningItem(Tagged, tag="reasoning"):
    id: str | UnsetType = UNSET
    summary: list[SummaryText] = []
    content: list[ReasoningText] | None | UnsetType = UNSET
    encrypted_content: str | None | UnsetType = UNSET  # OpenAI's alone: never forwarded
    status: Status | None | UnsetType = UNSET


class ItemReference(Tagged, tag="item_reference"):
    id: str  # an item of a stored response: the caller inlines it before translating


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem | ItemReference
OutputItem = MessageItem | FunctionCallItem | ReasoningItem
_ITEM_TYPES: tuple[type[InputItem], ...] = (MessageItem, FunctionCallItem, FunctionCallOutputItem, ReasoningItem,
                                             ItemReference)
_TAGS = {str(cls.__struct_config__.tag) for cls in _ITEM_TYPES}
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def input_item(raw: object, where: str) -> InputItem:
    """One item of `input` as its Struct; a ValueError naming `where` (and the field in it) if it cannot be."""
    if isinstance(raw, _ITEM_TYPES):
        return raw
    if not isinstance(raw, dict):
        raise TypeError(f"`{where}`: expected an object")
    kind = raw.get("type") or ("message" if "role" in raw else "item_reference")
    if not isinstance(kind, str) or kind not in _TAGS:
        raise ValueError(f"`{where}.type`: this model reads items of type {', '.join(sorted(_TAGS))}, "
                         f"not {kind!r}")
    try:
        item: InputItem = msgspec.convert({**raw, "type": kind}, InputItem)
    except msgspec.ValidationError as exc:
        # msgspec's path is relative to the item: make it the request's, first in the message where
        # api/decode.py reads a __post_init__ error's field from.
        text = str(exc)
        at = _AT.search(text)
        path, text = (where + at.group("path"), text[: at.start()]) if at else (where, text)
        missing = _MISSING.match(text)
        if missing:
            path, text = f"{path}.{missing.group('field')}", "this field is required"
        raise ValueError(f"`{path}`: {text}") from None
    return item


# ---------------------------------------------------------------- request


class Tool(Base):
    """A function tool (flat: `name`, `parameters` at the top), or a built-in one named by `type`
    (web_search, file_search, mcp, ...), decoded only so a translation can refuse it by name."""

    type: str
    name: Annotated[str, Meta(pattern=FUNCTION_NAME)] | UnsetType = UNSET
    description: str | None | UnsetType = UNSET
    parameters: dict[str, Any] | None | UnsetType = UNSET  # a JSON Schema, passed through untouched
    strict: bool | None | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.type == "function" and self.name is UNSET:
            raise ValueError("function tools require `name`")


class ToolRef(Base):
    type: str
    name: str | UnsetType = UNSET


class ToolChoiceObject(Base):
    """`{type: "function", name}`, `{type: "allowed_tools", mode, tools}`, or a built-in tool's `{type}`."""

    type: str
    name: str | UnsetType = UNSET
    mode: Literal["auto", "required"] | UnsetType = UNSET
    tools: list[ToolRef] | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.type == "function" and self.name is UNSET:
            raise ValueError('tool_choice of type "function" requires `name`')


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceObject


class TextFormat(Base):
    """Flat, unlike Chat's `response_format`: `name` and `schema` sit beside `type`."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | UnsetType = UNSET
    schema: dict[str, Any] | UnsetType = UNSET
    strict: bool | None | UnsetType = UNSET
    description: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.type == "json_schema" and (self.name is UNSET or self.schema is UNSET):
            raise ValueError("a json_schema format requires `name` and `schema`")


class TextConfig(Base):
    format: TextFormat | UnsetType = UNSET
    verbosity: str | None | UnsetType = UNSET


class Reasoning(Base):
    effort: str | None | UnsetType = UNSET  # none | minimal | low | medium | high | xhigh
    summary: str | None | UnsetType = UNSET


class ResponsesRequest(Base, kw_only=True):
    model: str
    input: str | list[Any] | UnsetType = UNSET  # items, typed by __post_init__: read them with `items()`
    instructions: str | None | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_choice: ToolChoice | UnsetType = UNSET
    parallel_tool_calls: bool | None | UnsetType = UNSET
    text: TextConfig | UnsetType = UNSET
    reasoning: Reasoning | None | UnsetType = UNSET
    max_output_tokens: PositiveInt | None | UnsetType = UNSET  # reasoning tokens included
    max_tool_calls: PositiveInt | None | UnsetType = UNSET
    temperature: Temperature | None | UnsetType = UNSET
    top_p: UnitInterval | None | UnsetType = UNSET
    metadata: Annotated[dict[str, str], Meta(max_length=16)] | None | UnsetType = UNSET
    user: str | UnsetType = UNSET
    safety_identifier: str | UnsetType = UNSET
    prompt_cache_key: str | None | UnsetType = UNSET
    store: bool | None | UnsetType = UNSET
    background: bool | None | UnsetType = UNSET
    previous_response_id: str | None | UnsetType = UNSET
    conversation: str | dict[str, Any] | None | UnsetType = UNSET  # OpenAI's conversations: not served
    prompt: dict[str, Any] | None | UnsetType = UNSET  # a prompt template stored at OpenAI: not served
    truncation: Literal["auto", "disabled"] | None | UnsetType = UNSET
    include: list[str] | None | UnsetType = UNSET
    stream: bool | None | UnsetType = UNSET

    def __post_init__(self) -> None:
        if isinstance(self.input, list):
            self.input = [input_item(raw, f"input[{i}]") for i, raw in enumerate(self.input)]

    def items(self) -> list[InputItem]:
        """`input` as items; a string is one user message."""
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input or [])


# ---------------------------------------------------------------- response


class InputTokensDetails(msgspec.Struct):
    cached_tokens: Count = 0
    cache_write_tokens: Count = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: Count = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: Count
    output_tokens: Count
    total_tokens: Count
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)
    cost: float | None | UnsetType = UNSET


class ResponseError(msgspec.Struct):
    code: str  # server_error, rate_limit_exceeded, ...; Codex stops retrying on context_length_exceeded
    message: str


class IncompleteDetails(msgspec.Struct):
    reason: Literal["max_output_tokens", "content_filter"]


ResponseStatus = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]


class Response(msgspec.Struct, kw_only=True):
    """The Response object. Not omit_defaults: the spec requires `error`, `incomplete_details`,
    `instructions`, `temperature`... present even when null. The request's config is echoed."""

    id: str  # resp_…
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    model: str
    output: list[OutputItem] = []
    parallel_tool_calls: bool = True
    metadata: dict[str, str] = {}
    tool_choice: ToolChoice = "auto"
    tools: list[Tool] = []
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    previous_response_id: str | None = None
    reasoning: Reasoning | None = None
    text: TextConfig = msgspec.field(default_factory=lambda: TextConfig(format=TextFormat(type="text")))
    truncation: Literal["auto", "disabled"] = "disabled"
    background: bool = False
    user: str | None = None
    usage: ResponseUsage | None = None


# ---------------------------------------------------------------- Chat equivalents

# Chat's finish_reason → (status, incomplete_details.reason). Tool calls and stops, and a reason
# newer than this table, complete the response: the answer did end.
_INCOMPLETE: dict[str, Literal["max_output_tokens", "content_filter"]] = {
    "length": "max_output_tokens", "content_filter": "content_filter"}


def status_of(finish_reason: str | None) -> tuple[Literal["completed", "incomplete"], IncompleteDetails | None]:
    reason = _INCOMPLETE.get(finish_reason or "")
    return ("incomplete", IncompleteDetails(reason)) if reason else ("completed", None)


# Built once: msgspec's encoders and decoders are cheapest reused (docs/perf-tips.rst).
encoder = msgspec.json.Encoder()
responses_request_decoder = msgspec.json.Decoder(ResponsesRequest)
