"""Chat chunks → OpenAI Responses stream events, as SSE bytes: a small state machine.

Events as https://platform.openai.com/docs/api-reference/responses-streaming describes them, and
as the SDK's stream helper (`src/openai/lib/streaming/responses/_responses.py`) rebuilds the
response from them: `response.created` first (it raises on anything else), then
`response.in_progress`; each item announced by `response.output_item.added` before its events,
and each content part by `response.content_part.added`, because the helper appends them and then
finds them by `output_index` / `content_index`, so those count 0, 1, 2... in opening order.
Items may interleave (each event names its item), so Chat's parallel tool calls stream live.

When Chat says the answer is over (`finish_reason`), the open items close in index order (text
done, part done, item done; arguments done, item done); the usage chunk may still come, so
`response.completed` (or `response.incomplete`) with the whole output and usage waits for
`finish`. Agents and Codex read the items of that last event, or of the `output_item.done` events.
"""

from __future__ import annotations

from typing import cast

import msgspec

from broker.inbound.responses_output import call_id, item_id, new_response, settle
from broker.wire.responses import encoder
from broker.wire.chat import ChatChunk, DeltaToolCall
from broker.wire.chat import Usage as ChatUsage
from broker.wire.responses import (
    FunctionCallItem,
    InputPart,
    MessageItem,
    OutputPart,
    OutputText,
    ReasoningItem,
    Refusal,
    Response,
    ResponseError,
    ResponsesRequest,
    status_of,
)
from broker.wire.responses_events import (
    ContentPartAdded,
    ContentPartDone,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    OutputItemAdded,
    OutputItemDone,
    OutputTextDelta,
    OutputTextDone,
    RefusalDelta,
    RefusalDone,
    ResponseCompleted,
    ResponseCreated,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    StreamEvent,
    encode_event,
    error_event,
)


class ResponsesStream:
    """`start()`, then every chunk of the provider's stream (`on_chunk`), then `finish` once it ends,
    or `failed` if it broke; each returns complete SSE events (`event: <type>\\ndata: <json>\\n\\n`),
    in order. `response` is the Response as built so far, whole once the stream has ended."""

    def __init__(self, req: ResponsesRequest, response_id: str, created_at: int) -> None:
        self.response: Response = new_response(req, response_id=response_id, created_at=created_at)
        self._sequence = 0
        self._started = self._closed = self._ended = False  # closed: finish_reason came, the items are done
        self._message: tuple[int, MessageItem] | None = None  # (output_index, item)
        self._content: list[InputPart | OutputPart] = []  # the message's parts
        self._calls: dict[int, tuple[str, int, FunctionCallItem]] = {}  # Chat's index → (its id, output_index, item)
        self._finish_reason: str | None = None
        self._usage: ChatUsage | None = None
        # The text part's deltas, joined into its `text` only when it is read (`_texts`): `+=` on an
        # attribute copies the whole text on every delta. And its delta events' bytes around the two
        # values that change (`_delta_template`): the stream's most frequent event, built without a Struct.
        self._pieces: list[str] = []
        self._text_part: tuple[OutputText, _Template] | None = None

    def start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        response = encoder.encode(self.response)  # the same Response in both: encoded once
        return [_CREATED.write(self._next(), response), _IN_PROGRESS.write(self._next(), response)]

    def on_chunk(self, chunk: ChatChunk) -> list[bytes]:
        # Most chunks of a stream: one more piece of the text whose part is open, and nothing else.
        # Written straight from the part's template (the general path below gives the same bytes, checked
        # by tests/test_responses_translate.py, at three times the cost a chunk).
        if self._text_part is not None and not self._closed and len(chunk.choices) == 1:
            choice = chunk.choices[0]
            change = choice.delta
            text = change.content
            if (isinstance(text, str) and text and choice.index == 0 and choice.finish_reason is None
                    and not change.refusal and not change.tool_calls and not self._ended):
                if isinstance(chunk.usage, ChatUsage):
                    self._usage = chunk.usage
                self._pieces.append(text)
                return [self._text_part[1].write(self._next(), encoder.encode(text))]
        if self._ended:
            return []
        out = self.start()
        if isinstance(chunk.usage, ChatUsage):
            self._usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0 or self._closed:
                continue  # to_chat asks for one choice
            for part, delta in ((OutputText, choice.delta.content), (Refusal, choice.delta.refusal)):
                if isinstance(delta, str) and delta:
                    out += self._part_delta(part, delta)
            for call in choice.delta.tool_calls or []:
                out += self._tool_call(call)
            if choice.finish_reason is not None:
                self._finish_reason = choice.finish_reason
                out += self._close()  # the usage chunk may still come: response.completed waits for `finish`
        return out

    def finish(self, usage: ChatUsage | None = None, *, completed_at: int | None = None) -> list[bytes]:
        """The last events; `usage` if the provider reported it apart from the chunks."""
        if self._ended:
            return []
        out = self.start() + self._close()
        self._ended = True
        settle(self.response, self._finish_reason, usage or self._usage, completed_at=completed_at)
        if self.response.status == "incomplete":
            return [*out, self._emit(ResponseIncomplete(response=self.response))]
        return [*out, self._emit(ResponseCompleted(response=self.response))]

    def failed(self, error_code: str, message: str, *, error_type: str = "server_error") -> list[bytes]:
        """The upstream broke after the 200: the `error` event, then `response.failed` with what was built."""
        if self._ended:
            return []
        out = self.start()
        self._ended = True
        self._texts()
        if not self._closed:  # items still open never finished
            for item in self.response.output:
                item.status = "incomplete"
        self.response.status, self.response.error = "failed", ResponseError(error_code, message)
        error = error_event(error_code, message, sequence_number=self._next(), error_type=error_type)
        return [*out, error, self._emit(ResponseFailed(response=self.response))]

    def _part_delta(self, kind: type[OutputText | Refusal], delta: str) -> list[bytes]:
        """Text or refusal: the message item, and its part of that kind, opened on first sight."""
        out: list[bytes] = []
        if self._message is None:
            self._message = (len(self.response.output), MessageItem(
                id=item_id("msg", self.response.id, len(self.response.output)), role="assistant",
                content=self._content, status="in_progress"))
            out.append(self._add(self._message[1]))
        index, message = self._message
        assert isinstance(message.id, str)
        if kind is OutputText and self._text_part is not None:
            self._pieces.append(delta)
            return [self._text_part[1].write(self._next(), encoder.encode(delta))]
        part = next((p for p in self._content if isinstance(p, kind)), None)
        if part is None:
            part = OutputText(text="") if kind is OutputText else Refusal(refusal="")
            self._content.append(part)
            out.append(self._emit(ContentPartAdded(item_id=message.id, output_index=index,
                                                   content_index=len(self._content) - 1, part=part)))
        k = self._content.index(part)
        if isinstance(part, OutputText):
            self._text_part = (part, _delta_template(message.id, index, k))
            self._pieces.append(delta)
            return [*out, self._text_part[1].write(self._next(), encoder.encode(delta))]
        part.refusal += delta
        return [*out, self._emit(RefusalDelta(item_id=message.id, output_index=index, content_index=k, delta=delta))]

    def _tool_call(self, delta: DeltaToolCall) -> list[bytes]:
        name, arguments = "", ""
        if delta.function:
            name, arguments = delta.function.name or "", delta.function.arguments or ""
        known = self._calls.get(delta.index)
        out: list[bytes] = []
        # A new call: an index not seen yet, or (from servers that number every call 0) a new id.
        if known is None or (delta.id and delta.id != known[0]):
            index = len(self.response.output)
            item = FunctionCallItem(id=item_id("fc", self.response.id, index),
                                    call_id=call_id(delta.id, self.response.id, index), name=name, arguments="",
                                    status="in_progress")
            self._calls[delta.index] = (delta.id or "", index, item)
            out.append(self._add(item))
        else:
            _, index, item = known
            item.name = item.name or name
        if arguments:
            assert isinstance(item.id, str)
            item.arguments += arguments
            out.append(self._emit(FunctionCallArgumentsDelta(item_id=item.id, output_index=index, delta=arguments)))
        return out

    def _texts(self) -> None:
        """The text part's `text`, from its deltas so far."""
        if self._text_part is not None:
            self._text_part[0].text = "".join(self._pieces)

    def _close(self) -> list[bytes]:
        """Every item done, in index order, with the status the finish_reason gives."""
        if self._closed:
            return []
        self._closed = True
        self._texts()
        status, _ = status_of(self._finish_reason)
        out: list[bytes] = []
        for index, item in enumerate(self.response.output):
            assert isinstance(item.id, str) and not isinstance(item, ReasoningItem)
            if isinstance(item, MessageItem):
                for k, part in enumerate(self._content):
                    if isinstance(part, OutputText):
                        out.append(self._emit(OutputTextDone(item_id=item.id, output_index=index, content_index=k,
                                                             text=part.text)))
                    elif isinstance(part, Refusal):
                        out.append(self._emit(RefusalDone(item_id=item.id, output_index=index, content_index=k,
                                                          refusal=part.refusal)))
                    if isinstance(part, OutputText | Refusal):
                        out.append(self._emit(ContentPartDone(item_id=item.id, output_index=index, content_index=k,
                                                              part=part)))
            else:
                out.append(self._emit(FunctionCallArgumentsDone(item_id=item.id, output_index=index, name=item.name,
                                                                arguments=item.arguments)))
            item.status = status
            out.append(self._emit(OutputItemDone(output_index=index, item=item)))
        return out

    def _add(self, item: MessageItem | FunctionCallItem) -> bytes:
        self.response.output.append(item)
        return self._emit(OutputItemAdded(output_index=len(self.response.output) - 1, item=item))

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence - 1

    def _emit(self, event: StreamEvent) -> bytes:
        """Numbered and encoded now, so the event shows the items as they are at this point of the stream."""
        event.sequence_number = self._next()
        return encode_event(event)


_SEQUENCE = 987_654_321  # stand-ins, found once each in a sample event's bytes
_DELTA = "\u0000"
_RESPONSE = msgspec.Raw(b'"\\u0000response"')


class _Template:
    """An event's bytes around its sequence number and one other value (a delta, a Response), cut from
    one encode_event wrote with stand-ins for both, so that writing an event from it costs a join and
    gives exactly what encode_event writes, whatever order msgspec puts the two fields in."""

    __slots__ = ("head", "middle", "tail", "value_first")

    def __init__(self, sample: bytes, value: bytes) -> None:
        number = b"%d" % _SEQUENCE
        assert sample.count(number) == 1 and sample.count(value) == 1, "each stand-in appears once"
        self.value_first = sample.index(value) < sample.index(number)
        first, second = (value, number) if self.value_first else (number, value)
        self.head, _, rest = sample.partition(first)
        self.middle, _, self.tail = rest.partition(second)

    def write(self, sequence_number: int, value: bytes) -> bytes:
        number = b"%d" % sequence_number
        if self.value_first:
            return b"".join((self.head, value, self.middle, number, self.tail))
        return b"".join((self.head, number, self.middle, value, self.tail))


def _delta_template(message_id: str, output_index: int, content_index: int) -> _Template:
    sample = encode_event(OutputTextDelta(item_id=message_id, output_index=output_index, content_index=content_index,
                                          delta=_DELTA, sequence_number=_SEQUENCE))
    return _Template(sample, encoder.encode(_DELTA))


def _lifecycle_template(kind: type[ResponseCreated | ResponseInProgress]) -> _Template:
    return _Template(encode_event(kind(response=cast(Response, _RESPONSE), sequence_number=_SEQUENCE)), bytes(_RESPONSE))


_CREATED, _IN_PROGRESS = _lifecycle_template(ResponseCreated), _lifecycle_template(ResponseInProgress)
