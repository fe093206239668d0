"""OpenAI Responses stream events, and their SSE framing.

Events as https://platform.openai.com/docs/api-reference/responses-streaming lists them, with the
fields the `openai` SDK's `src/openai/types/responses/response_stream_event.py` types. Each goes out
as `event: <type>` + `data: <json>` (OpenAI's own streams name their events; the SDK dispatches on
the JSON's `type`), every one with a `sequence_number` counting from 0 over the whole stream (the SDK
resumes a stream with `starting_after=<n>` and drops what it has already seen by that number).
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.wire.responses import OutputItem, OutputPart, Response, encoder


class Event(msgspec.Struct, tag_field="type", kw_only=True):
    sequence_number: int = 0  # set by the stream that sends the event, as it sends it


class Lifecycle(Event):
    response: Response  # the whole Response as it stands


class ResponseCreated(Lifecycle, tag="response.created"): ...
class ResponseInProgress(Lifecycle, tag="response.in_progress"): ...
class ResponseCompleted(Lifecycle, tag="response.completed"): ...
class ResponseIncomplete(Lifecycle, tag="response.incomplete"): ...
class ResponseFailed(Lifecycle, tag="response.failed"): ...


class ItemEvent(Event):
    output_index: int
    item: OutputItem


class OutputItemAdded(ItemEvent, tag="response.output_item.added"): ...
class OutputItemDone(ItemEvent, tag="response.output_item.done"): ...


class InItem(Event):
    """An event about part of an item: which item, by id and by position in `output`."""

    item_id: str
    output_index: int


class InPart(InItem):
    content_index: int


class ContentPartAdded(InPart, tag="response.content_part.added"):
    part: OutputPart


class ContentPartDone(InPart, tag="response.content_part.done"):
    part: OutputPart


class OutputTextDelta(InPart, tag="response.output_text.delta"):
    delta: str
    logprobs: list[dict[str, Any]] = []  # required by the SDK's type, even empty


class OutputTextDone(InPart, tag="response.output_text.done"):
    text: str
    logprobs: list[dict[str, Any]] = []


class RefusalDelta(InPart, tag="response.refusal.delta"):
    delta: str


class RefusalDone(InPart, tag="response.refusal.done"):
    refusal: str


class FunctionCallArgumentsDelta(InItem, tag="response.function_call_arguments.delta"):
    delta: str


class FunctionCallArgumentsDone(InItem, tag="response.function_call_arguments.done"):
    name: str  # in the API reference's event, if not (yet) in every SDK's type
    arguments: str


class ErrorDetail(msgspec.Struct):
    type: str
    code: str | None
    message: str
    param: str | None = None


class ErrorEvent(Event, tag="error"):
    """Both shapes in one event: the spec's flat `code`/`message`/`param`, and the nested `error`
    object OpenAI was seen sending (openai-dotnet#881). The nested one is what makes openai-python
    raise (`src/openai/_streaming.py` raises APIError on a truthy `error` key, and yields the flat
    form as an ordinary event)."""

    code: str | None
    message: str
    param: str | None
    error: ErrorDetail


StreamEvent = (ResponseCreated | ResponseInProgress | ResponseCompleted | ResponseIncomplete | ResponseFailed
               | OutputItemAdded | OutputItemDone | ContentPartAdded | ContentPartDone | OutputTextDelta
               | OutputTextDone | RefusalDelta | RefusalDone | FunctionCallArgumentsDelta
               | FunctionCallArgumentsDone | ErrorEvent)


def encode_event(event: StreamEvent) -> bytes:
    """One complete SSE event, named for its type."""
    name = type(event).__struct_config__.tag
    assert isinstance(name, str)
    return b"event: %s\ndata: %s\n\n" % (name.encode(), encoder.encode(event))


def error_event(code: str, message: str, *, sequence_number: int, error_type: str = "server_error",
                param: str | None = None) -> bytes:
    """The `error` event that reports a failure after the 200 (then `response.failed`, then `[DONE]`)."""
    detail = ErrorDetail(error_type, code, message, param)
    return encode_event(ErrorEvent(sequence_number=sequence_number, code=code, message=message, param=param,
                                   error=detail))
