"""OpenAI Responses ⇄ an upstream that speaks it itself (OpenAI, Azure OpenAI, vLLM, Ollama): no translation.

The client's body goes up as sent, but for what is ours alone: `previous_response_id` names a response
in our store, not the upstream's, so the earlier turns go up inlined as `input` (`native_body`), and
`background` is run by our async jobs, not the upstream's. The answer comes back as written, but for
what the client must see as ours: its `id` (the one our store keeps), `model` (the public name), the
`previous_response_id` and `background` it sent, and `usage.cost` (`Identity.answer`).

Earlier turns go up as stateless clients (Codex, the Agents SDK) replay them
(https://platform.openai.com/docs/guides/reasoning#keeping-reasoning-items-in-context): a reasoning
item only with its `encrypted_content` (without it, its id means something only to the upstream that
stored it, and OpenAI answers 404 for an id it does not hold), and the calls and messages without the
upstream's item ids, since OpenAI refuses a `fc_…` id given without the reasoning item it came with.

A request that asks for what only such an upstream runs (built-in tools, OpenAI's own items) still has a
Chat form, for routing, limits and the ledger: `translatable` drops those parts first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import UNSET

from broker.errors import UpstreamError
from broker.wire.chat import Usage
from broker.wire.responses import (
    AnyItem,
    ForeignItem,
    FunctionCallItem,
    InputFile,
    InputImage,
    MessageItem,
    ReasoningItem,
    ResponsesRequest,
    ToolChoiceObject,
    encoder,
)

_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])
NULL = msgspec.Raw(b"null")


def native_body(body: bytes, history: Sequence[AnyItem], own: Sequence[AnyItem]) -> bytes:
    """The body for a Responses-speaking upstream: `body` with the earlier turns (`history`, read from our
    store) and its own items as `input`, and without `previous_response_id` and `background`. Every other
    value keeps its bytes."""
    fields = _fields.decode(body)
    if history:
        fields["input"] = msgspec.Raw(encoder.encode([*earlier_turns(history), *own]))
    fields.pop("previous_response_id", None)
    fields.pop("background", None)
    return encoder.encode(fields)


def needs_native_body(request: ResponsesRequest, history: Sequence[AnyItem]) -> bool:
    return bool(history) or request.previous_response_id not in (UNSET, None) or request.background not in (UNSET, None)


def earlier_turns(history: Sequence[AnyItem]) -> list[AnyItem]:
    """Stored items as a stateless client replays them (see the module's docstring)."""
    out: list[AnyItem] = []
    for item in history:
        if isinstance(item, ReasoningItem):
            if isinstance(item.encrypted_content, str):
                out.append(item)
        elif isinstance(item, MessageItem | FunctionCallItem) and isinstance(item.id, str):
            out.append(msgspec.structs.replace(item, id=UNSET, status=UNSET))
        else:
            out.append(item)
    return out


def translatable(request: ResponsesRequest, history: Sequence[AnyItem]) -> tuple[ResponsesRequest, list[AnyItem]]:
    """The request and history without what only a Responses-speaking upstream runs: built-in tools (and a
    tool_choice naming one), OpenAI's own items, stored prompts and conversations, files by id or URL.
    Their Chat form is what routing, limits and the ledger read; the upstream gets the request as sent."""
    tools = [tool for tool in request.tools or () if tool.type == "function"]
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceObject) and choice.type not in ("function", "allowed_tools"):
        choice = UNSET
    if isinstance(choice, ToolChoiceObject) and choice.type == "allowed_tools":
        kept = [ref for ref in choice.tools or () if ref.type == "function"]
        choice = msgspec.structs.replace(choice, tools=kept) if kept else UNSET
    items = _translatable_items(request.items())
    stripped = msgspec.structs.replace(request, tools=tools or UNSET, tool_choice=choice, conversation=UNSET,
                                       prompt=UNSET, input=items)
    return stripped, _translatable_items(history)


def _translatable_items(items: Sequence[AnyItem]) -> list[AnyItem]:
    out: list[AnyItem] = []
    for item in items:
        if isinstance(item, ForeignItem):
            continue
        if isinstance(item, MessageItem) and isinstance(item.content, list):
            parts = [p for p in item.content if not isinstance(p, InputImage | InputFile) or _inline(p)]
            item = msgspec.structs.replace(item, content=parts or "")
        out.append(item)
    return out


def _inline(part: InputImage | InputFile) -> bool:
    return bool(part.image_url) if isinstance(part, InputImage) else bool(part.file_data)


# ---------------------------------------------------------------- the answer


class NativeUsage(msgspec.Struct):
    """The Responses API's usage, as read from an upstream's answer (broker/wire/responses.py `ResponseUsage`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: dict[str, Any] | None = None
    output_tokens_details: dict[str, Any] | None = None

    def to_chat(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens, self.total_tokens or self.input_tokens + self.output_tokens,
                     prompt_tokens_details=self.input_tokens_details or UNSET,
                     completion_tokens_details=self.output_tokens_details or UNSET)


class Answered(msgspec.Struct):
    """What an upstream's Response says, read from a parsed copy."""

    status: str | None = None
    usage: NativeUsage | None = None
    error: dict[str, Any] | None = None


class Event(msgspec.Struct):
    """A stream event, as far as relaying it needs: its type, place, text and the Response it carries."""

    type: str
    sequence_number: int = 0
    response: msgspec.Raw = NULL  # msgspec.Raw is never optional: `null` when the event carries none
    delta: Any = None  # text and arguments deltas are strings: the meter counts them
    code: str | None = None  # an `error` event's (flat, as the spec has it; OpenAI also nests it in `error`)
    message: str | None = None
    error: dict[str, Any] | None = None


_answered = msgspec.json.Decoder(Answered)
_event = msgspec.json.Decoder(Event)


def read(response: bytes) -> Answered:
    try:
        return _answered.decode(response)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamError(f"the upstream's Response could not be read: {exc}", retryable=True) from None


def read_event(data: bytes) -> Event:
    try:
        return _event.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpstreamError(f"an upstream stream event could not be read: {exc}", retryable=True) from None


class Identity(msgspec.Struct, frozen=True):
    """What the client sees as ours on a Response an upstream wrote."""

    response_id: str
    model: str
    previous_response_id: msgspec.Raw
    background: msgspec.Raw

    @classmethod
    def of(cls, body: bytes, response_id: str, model: str) -> Identity:
        """From the client's body as it sent it."""
        sent = _fields.decode(body)
        return cls(response_id, model, sent.get("previous_response_id", NULL),
                   sent.get("background", msgspec.Raw(b"false")))

    def response(self, response: bytes | msgspec.Raw, usage: Usage | None = None, **changes: Any) -> bytes:
        """The upstream's Response as the client's: ours where the docstring says, `usage.cost` from `usage`."""
        fields = _fields.decode(response)
        fields.update(id=msgspec.Raw(encoder.encode(self.response_id)), model=msgspec.Raw(encoder.encode(self.model)),
                      previous_response_id=self.previous_response_id, background=self.background)
        if usage is not None and isinstance(usage.cost, float) and "usage" in fields:
            priced: dict[str, Any] = msgspec.json.decode(fields["usage"])
            if isinstance(priced, dict):
                fields["usage"] = msgspec.Raw(encoder.encode({**priced, "cost": usage.cost}))
        fields.update({name: msgspec.Raw(encoder.encode(value)) for name, value in changes.items()})
        return encoder.encode(fields)

    def event(self, data: bytes, usage: Usage | None = None) -> bytes:
        """A stream event whose `response` is made the client's."""
        fields = _fields.decode(data)
        fields["response"] = msgspec.Raw(self.response(fields["response"], usage))
        return encoder.encode(fields)
