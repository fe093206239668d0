"""Bedrock `converse-stream` events → OpenAI chunks: a small state machine, no I/O.

The body is AWS's binary event stream (`application/vnd.amazon.eventstream`): frames with a prelude,
headers and a JSON payload, each guarded by CRC32s. botocore's `EventStreamBuffer` parses them and
checks both checksums, so a damaged frame is an error rather than garbled text. A frame's headers say
what it is: `:message-type` `event` with `:event-type` messageStart, contentBlockStart (a tool call's
id and name), contentBlockDelta (text, or a fragment of a tool call's JSON input), contentBlockStop,
messageStop (the stop reason) and metadata (usage, last); or `exception` with `:exception-type`
(throttlingException, modelStreamErrorException, ...: bedrock_errors.py); or a protocol-level
`error` with `:error-code` / `:error-message` headers.
(https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html)

Tool calls are numbered from 0 in the order their blocks start; the id and name go out once, on the
call's first delta, and its input follows as argument fragments.
"""

from __future__ import annotations

from collections.abc import Iterator

from botocore.eventstream import EventStreamBuffer, ParserError  # type: ignore[import-untyped]
from msgspec import DecodeError

from broker.errors import UpstreamError
from broker.wire import ChatChunk, ChunkChoice, Delta, DeltaFunction, DeltaToolCall, Usage
from workers.providers import bedrock_wire as w
from workers.providers.bedrock_errors import exception_event
from workers.providers.bedrock_translate import finish_reason, usage


class Frames:
    """Body bytes in any slicing → (message type, event or exception type, payload), CRCs checked."""

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()

    def feed(self, data: bytes) -> Iterator[tuple[str, str, bytes]]:
        self._buffer.add_data(data)
        try:
            for message in self._buffer:
                headers = message.headers
                kind = str(headers.get(":message-type", "event"))
                if kind == "error":
                    yield kind, str(headers.get(":error-code", "")), str(headers.get(":error-message", "")).encode()
                else:
                    name = headers.get(":exception-type" if kind == "exception" else ":event-type", "")
                    yield kind, str(name), bytes(message.payload)
        except ParserError as exc:
            raise UpstreamError(f"Bedrock sent a damaged event stream frame ({type(exc).__name__})",
                                retryable=True) from None


class StreamState:
    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.calls: dict[int, int] = {}  # content block index → tool call index
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.done = False  # metadata arrived: nothing follows it

    def chunk(self, delta: Delta, finish: str | None = None) -> ChatChunk:
        # id and created are the worker's to set; it rewrites both on every chunk.
        return ChatChunk("", 0, self.model, [ChunkChoice(0, delta, finish)])

    def start(self) -> list[ChatChunk]:
        if self.started:
            return []
        self.started = True
        return [self.chunk(Delta(role="assistant", content=""))]


def on_frame(kind: str, name: str, payload: bytes, state: StreamState) -> list[ChatChunk]:
    if kind == "exception":
        raise exception_event(name, payload)
    if kind == "error":
        raise UpstreamError(f"Bedrock stream error ({name or 'unknown'}): {payload.decode(errors='replace')}",
                            retryable=True)
    try:
        return _on_event(name, payload, state)
    except DecodeError as exc:
        raise UpstreamError(f"Bedrock sent an invalid {name} event: {exc}", retryable=True) from None


def _on_event(name: str, payload: bytes, state: StreamState) -> list[ChatChunk]:
    chunks = state.start()
    if name == "contentBlockStart":
        event = w.block_start_decoder.decode(payload)
        if event.start.tool_use is not None:
            index = state.calls[event.content_block_index] = len(state.calls)
            call = event.start.tool_use
            chunks.append(state.chunk(Delta(tool_calls=[DeltaToolCall(
                index, call.tool_use_id, "function", DeltaFunction(call.name, ""))])))
    elif name == "contentBlockDelta":
        delta = w.block_delta_decoder.decode(payload)
        if delta.delta.text:
            chunks.append(state.chunk(Delta(content=delta.delta.text)))
        elif delta.delta.tool_use is not None and delta.delta.tool_use.input:
            call_index = state.calls.get(delta.content_block_index)
            if call_index is None:
                raise UpstreamError("Bedrock sent tool input for a block that never started", retryable=True)
            chunks.append(state.chunk(Delta(tool_calls=[DeltaToolCall(
                call_index, function=DeltaFunction(arguments=delta.delta.tool_use.input))])))
    elif name == "messageStop":
        state.finish = finish_reason(w.message_stop_decoder.decode(payload).stop_reason)
        chunks.append(state.chunk(Delta(), state.finish))
    elif name == "metadata":
        state.usage = usage(w.metadata_decoder.decode(payload).usage)
        state.done = True
        if state.usage is not None:
            chunks.append(ChatChunk("", 0, state.model, [], usage=state.usage))
    # messageStart, contentBlockStop and events newer than this module carry nothing a chunk needs.
    return chunks


def on_end(state: StreamState) -> None:
    """The body ended: an error unless the answer finished (a cut stream must not pass for a whole one)."""
    if state.finish is None:
        raise UpstreamError("Bedrock ended the stream before the answer finished", retryable=True)

