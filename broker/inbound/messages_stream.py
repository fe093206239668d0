"""Chat chunks → Anthropic Messages stream events, as SSE bytes: a small state machine.

Events as https://docs.anthropic.com/en/docs/build-with-claude/streaming describes them, and as
the SDK's accumulator (`src/anthropic/lib/streaming/_messages.py`, `accumulate_event`) rebuilds
the message from them: `message_start` first (it raises on anything else), then each block's
`content_block_start`, deltas and `content_block_stop`, the blocks indexed 0, 1, 2... in opening
order (it appends a block at its start and finds it by index), then `message_delta` with the stop
reason and the cumulative usage, then `message_stop`.

Blocks cannot interleave, while Chat's parallel tool calls may: a call that starts while another
block is open is buffered whole, and sent when the open block closes, at the finish. Text closes
when the first call starts (what OpenAI streams do); text arriving during a call waits likewise.
"""

from __future__ import annotations

from broker.inbound.messages import msg_id, stop_reason, tool_use_id
from broker.wire.chat import ChatChunk, DeltaToolCall
from broker.wire.chat import Usage as ChatUsage
from broker.wire.messages import Message, TextBlock, ToolUseBlock, Usage
from broker.wire.messages_events import (
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    InputJSONDelta,
    MessageDelta,
    MessageStart,
    MessageStop,
    StopInfo,
    TextDelta,
    encode_event,
)


class _Text:
    def __init__(self, text: str) -> None:
        self.parts = [text]


class _Call:
    def __init__(self, raw_id: str, block_id: str, name: str, arguments: str) -> None:
        self.raw_id, self.id, self.name, self.parts = raw_id, block_id, name, [arguments]


class MessagesStream:
    """Feed it every chunk of the provider's stream (`on_chunk`), then call `finish` once it ends;
    each returns complete SSE events (`event: <type>\\ndata: <json>\\n\\n`), in order."""

    def __init__(self, model: str, message_id: str, *, input_tokens: int = 0) -> None:
        self.model, self.message_id = model, msg_id(message_id)
        self._input_tokens = input_tokens  # an estimate, if any: the real count comes in message_delta
        self._started = self._finished = False
        self._blocks = 0  # blocks opened so far: the next one's index
        self._open: _Text | _Call | None = None
        self._waiting: list[_Text | _Call] = []
        self._calls: dict[int, _Call] = {}  # Chat's tool call index → its latest call
        self._count = 0  # tool calls seen
        self._finish_reason: str | None = None
        self._usage: ChatUsage | None = None

    def on_chunk(self, chunk: ChatChunk) -> list[bytes]:
        if self._finished:
            return []
        out = self._start()
        if isinstance(chunk.usage, ChatUsage):
            self._usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # to_chat asks for one choice
            for text in (choice.delta.content, choice.delta.refusal):
                if isinstance(text, str) and text:
                    out += self._text(text)
            for call in choice.delta.tool_calls or []:
                out += self._tool_call(call)
            if choice.finish_reason is not None:
                self._finish_reason = choice.finish_reason
                out += self._close()  # the usage chunk may still come: message_delta waits for `finish`
        return out

    def finish(self, usage: ChatUsage | None = None) -> list[bytes]:
        """The last events; `usage` if the provider reported it apart from the chunks."""
        if self._finished:
            return []
        out = self._start() + self._close()
        self._finished = True
        usage = usage or self._usage
        counts = Usage.from_chat(usage) if usage else Usage(input_tokens=self._input_tokens, output_tokens=0)
        stop = stop_reason(self._finish_reason, tool_used=self._count > 0)
        return [*out, encode_event(MessageDelta(StopInfo(stop), counts)), encode_event(MessageStop())]

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        usage = Usage(input_tokens=self._input_tokens, output_tokens=0)
        return [encode_event(MessageStart(Message(self.message_id, self.model, [], usage)))]

    def _text(self, text: str) -> list[bytes]:
        if isinstance(self._open, _Text):
            self._open.parts.append(text)
            return [self._delta(TextDelta(text))]
        if self._open is None:
            return self._begin(_Text(text))
        if self._waiting and isinstance(self._waiting[-1], _Text):
            self._waiting[-1].parts.append(text)
        else:
            self._waiting.append(_Text(text))
        return []

    def _tool_call(self, delta: DeltaToolCall) -> list[bytes]:
        name, arguments = "", ""
        if delta.function:
            name, arguments = delta.function.name or "", delta.function.arguments or ""
        call = self._calls.get(delta.index)
        # A new call: an index not seen yet, or (from servers that number every call 0) a new id.
        if call is None or (delta.id and delta.id != call.raw_id):
            raw_id = delta.id or ""
            call = _Call(raw_id, tool_use_id(raw_id, self.message_id, self._count), name, arguments)
            self._calls[delta.index] = call
            self._count += 1
            if isinstance(self._open, _Call):
                self._waiting.append(call)
                return []
            return self._close() + self._begin(call)
        if call is not self._open:  # buffered (or closed: then too late, as for any block)
            call.name = call.name or name
            call.parts.append(arguments)
            return []
        return [self._delta(InputJSONDelta(arguments))] if arguments else []

    def _begin(self, item: _Text | _Call) -> list[bytes]:
        """Open a block with what it holds so far."""
        self._open, index = item, self._blocks
        self._blocks += 1
        body = "".join(item.parts)
        if isinstance(item, _Text):
            return [encode_event(ContentBlockStart(index, TextBlock(""))), self._delta(TextDelta(body))]
        start = encode_event(ContentBlockStart(index, ToolUseBlock(item.id, item.name, {})))
        return [start, self._delta(InputJSONDelta(body))] if body else [start]

    def _close(self) -> list[bytes]:
        """Close the open block, then send whatever waited for it, each block whole."""
        out: list[bytes] = []
        while self._open is not None:
            out.append(encode_event(ContentBlockStop(self._blocks - 1)))
            self._open = None
            if self._waiting:
                out += self._begin(self._waiting.pop(0))
        return out

    def _delta(self, delta: TextDelta | InputJSONDelta) -> bytes:
        return encode_event(ContentBlockDelta(self._blocks - 1, delta))
