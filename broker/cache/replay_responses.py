"""Cache entries ⇄ OpenAI Responses answers (/v1/responses): the Response the cache keeps, and a kept
one given back as a hit, as a Response or replayed as its event stream.

A Response is kept whole, as its client got it. A plain job's final body is one; a stream's is its
closing events (workers/responses.py holds them back until the API has stored the response), the
last of which carries it. Only a `completed` or `incomplete` one is kept, never a failed one.

A hit is a new response to the request that asked, which the store keeps under its own id (so a
later `previous_response_id` can name it): that id (`resp_…`, minted at the door), its own
`created_at`, and this request's settings echoed (the cache key leaves out what cannot change the
answer, such as `metadata` or `store`, so they may differ from the first request's). From the kept
one come its output (item ids minted from the new id, as a worker mints them), status and
incomplete details, and usage at no cost, since no upstream was paid for it. A streamed hit turns
the kept output back into the Chat chunks that would have produced it and feeds them through the
worker's own state machine (ResponsesStream), so it is the event sequence a worker sends, sequence
numbers included (https://platform.openai.com/docs/api-reference/responses-streaming).
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from broker.inbound.responses_output import item_id, new_response
from broker.inbound.responses_stream import ResponsesStream
from broker.wire.chat import ChatChunk, ChunkChoice, Delta, DeltaFunction, DeltaToolCall
from broker.wire.responses import (
    FunctionCallItem,
    MessageItem,
    OutputItem,
    OutputText,
    Refusal,
    Response,
    ResponsesRequest,
    encoder,
)
from broker.wire.responses_events import ResponseCompleted, ResponseIncomplete, encode_event

_response = msgspec.json.Decoder(Response)


class _Closing(msgspec.Struct):
    """A stream's last event, as far as keeping it goes: its type and the whole Response."""

    type: str
    response: msgspec.Raw


_closing = msgspec.json.Decoder(_Closing)
_ENDINGS = ("response.completed", "response.incomplete")
# Chat's finish_reason for an incomplete response: the inverse of broker/wire/responses.py `status_of`.
_FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}


def assemble(final_body: bytes, *, streamed: bool) -> bytes | None:
    """The Response a job's final body carries, to keep; None unless it completed (or ended incomplete)
    and holds only what a replay rebuilds."""
    try:
        if streamed:  # event blocks: the last `data:` line is the closing event's
            data = final_body[final_body.rindex(b"\ndata: ") + 7:].split(b"\n", 1)[0]
            closing = _closing.decode(data)
            if closing.type not in _ENDINGS:
                return None
            kept = bytes(closing.response)
        else:
            kept = final_body
        response = _response.decode(kept)
    except (msgspec.DecodeError, ValueError):  # ValidationError is a DecodeError; rindex raises ValueError
        return None
    if response.status not in ("completed", "incomplete") or not _replayable(response.output):
        return None
    return kept


def _replayable(output: list[OutputItem]) -> bool:
    """What ResponsesStream builds: one assistant message of text and refusal parts, function calls.
    Reasoning items it never makes (Chat upstreams' reasoning is not carried)."""
    messages = [item for item in output if isinstance(item, MessageItem)]
    return len(messages) <= 1 and all(
        isinstance(item, FunctionCallItem)
        or (isinstance(item, MessageItem) and item.role == "assistant" and isinstance(item.content, list)
            and all(isinstance(part, OutputText | Refusal) for part in item.content))
        for item in output)


def hit(entry: bytes, request: ResponsesRequest, *, response_id: str, created_at: int,
        completed_at: int) -> Response:
    """A kept Response as the answer to `request`, under its own id."""
    kept = _response.decode(entry)
    response = new_response(request, response_id=response_id, created_at=created_at)
    response.output = [_renamed(item, response.id, index) for index, item in enumerate(kept.output)]
    response.status, response.incomplete_details = kept.status, kept.incomplete_details
    response.completed_at = completed_at if kept.status == "completed" else None
    response.usage = msgspec.structs.replace(kept.usage, cost=0.0) if kept.usage is not None else None
    return response


def _renamed(item: OutputItem, response_id: str, index: int) -> OutputItem:
    """An item with the id the worker would have given it in this response (a call keeps its call_id:
    the upstream's, which the client answers to and to_chat sends back)."""
    if isinstance(item, MessageItem):
        return msgspec.structs.replace(item, id=item_id("msg", response_id, index))
    if isinstance(item, FunctionCallItem):
        return msgspec.structs.replace(item, id=item_id("fc", response_id, index))
    return item


def hit_body(entry: bytes, request: ResponsesRequest, *, response_id: str, created_at: int,
             completed_at: int) -> bytes:
    return encoder.encode(hit(entry, request, response_id=response_id, created_at=created_at,
                              completed_at=completed_at))


def replay(entry: bytes, request: ResponsesRequest, *, response_id: str, created_at: int,
           completed_at: int) -> list[bytes]:
    """A kept Response as the stream a worker would have sent for `request`, each event a whole SSE block."""
    response = hit(entry, request, response_id=response_id, created_at=created_at, completed_at=completed_at)
    stream = ResponsesStream(request, response_id, created_at)
    events = stream.start()
    for delta in _deltas(response.output):
        events += stream.on_chunk(ChatChunk(response.id, created_at, response.model, [ChunkChoice(0, delta)]))
    events += stream.on_chunk(ChatChunk(response.id, created_at, response.model,
                                        [ChunkChoice(0, Delta(), _finish_reason(response))]))
    # Not `stream.finish()`: the closing event is the hit itself, with the kept usage at no cost (a Chat
    # usage would lose the cost) and what a stream's items never carry (a non-streamed answer's
    # citations). The stream numbered every event from 0, so the next number is the count.
    ending: ResponseCompleted | ResponseIncomplete = (
        ResponseIncomplete(response=response, sequence_number=len(events)) if response.status == "incomplete"
        else ResponseCompleted(response=response, sequence_number=len(events)))
    return [*events, encode_event(ending)]


def _deltas(output: list[OutputItem]) -> Iterator[Delta]:
    """The Chat deltas that build `output` through ResponsesStream, in its order: text and refusal
    open the message, each call (whole, in one fragment) a function_call item."""
    calls = 0
    for item in output:
        if isinstance(item, MessageItem) and isinstance(item.content, list):
            for part in item.content:
                if isinstance(part, OutputText):
                    yield Delta(content=part.text)
                elif isinstance(part, Refusal):
                    yield Delta(refusal=part.refusal)
        elif isinstance(item, FunctionCallItem):
            yield Delta(tool_calls=[DeltaToolCall(calls, item.call_id, "function",
                                                  DeltaFunction(item.name, item.arguments))])
            calls += 1


def _finish_reason(response: Response) -> str:
    if response.incomplete_details is not None:
        return _FINISH.get(response.incomplete_details.reason, "length")
    return "tool_calls" if any(isinstance(item, FunctionCallItem) for item in response.output) else "stop"
