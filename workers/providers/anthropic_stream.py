"""Anthropic stream events → OpenAI chunks: a small state machine.

Events as https://docs.anthropic.com/en/docs/build-with-claude/streaming describes them; chunks as
https://platform.openai.com/docs/api-reference/chat-streaming.

Anthropic numbers content blocks (text and tool_use alike); OpenAI numbers tool
calls only, from 0, and its SDK accumulator inserts at `index`. So tool calls
get their own counter, and only a call's first fragment carries id, type and
name: the SDK concatenates whatever repeats. The finish chunk waits for
`message_stop`, because `message_delta` may come more than once and its usage
counts are cumulative (the last one wins).
"""

from __future__ import annotations

import time

import msgspec
from msgspec import UNSET

from broker.errors import UpstreamError, redact
from broker.wire import ChatChunk, ChunkChoice, Delta, DeltaFunction, DeltaToolCall
from broker.wire.messages import ErrorDetail, Usage, finish_reason_of
from workers.providers.anthropic_translate import JSON_TOOL
from workers.providers.anthropic_wire import ContentBlock, event_decoder

# The HTTP status each error type comes with (https://docs.anthropic.com/en/api/errors), so a stream that fails
# before its first byte reaches the client is mapped exactly like a failed request.
ERROR_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "timeout_error": 504, "overloaded_error": 529,
}


def error_from_event(detail: ErrorDetail) -> UpstreamError:
    status = ERROR_STATUS.get(detail.type, 500)
    return UpstreamError.for_status(
        status, f"upstream error mid-stream ({detail.type}): {redact(detail.message or 'unknown error')}",
        code="rate_limit_exceeded" if status == 429 else None,
    )


class AnthropicStreamState:
    """Feed it each SSE event in order; `done` turns true at `message_stop`."""

    def __init__(self, *, json_mode: bool = False, created: int | None = None) -> None:
        self.json_mode = json_mode
        self.created = int(time.time()) if created is None else created
        self.id = ""
        self.model = ""
        self.done = False
        self._usage = Usage(0, 0, 0, 0)
        self._stop_reason: str | None = None
        self._tool_index: dict[int, int] = {}  # Anthropic block index → OpenAI tool call index
        self._json_blocks: set[int] = set()  # the JSON-mode tool's blocks: their input is the answer text
        self._pending_input: dict[int, bytes] = {}  # input given whole at block start, if no deltas follow

    def on_event(self, event_name: str | None, data: bytes) -> list[ChatChunk]:
        if event_name == "ping" or not data.strip():
            return []
        try:
            ev = event_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"upstream sent an invalid stream event: {exc}", retryable=True) from None
        match ev.type:
            case "message_start" if ev.message is not None:
                self.id, self.model = ev.message.id, ev.message.model
                self._merge_usage(ev.message.usage)
                return [self._chunk(Delta(role="assistant", content=""))]
            case "content_block_start" if ev.content_block is not None:
                return self._block_start(ev.index, ev.content_block)
            case "content_block_delta" if ev.delta is not None:
                if ev.delta.type == "text_delta":
                    return self._text(ev.delta.text)
                if ev.delta.type == "input_json_delta":
                    self._pending_input.pop(ev.index, None)
                    return self._arguments(ev.index, ev.delta.partial_json)
                return []  # thinking_delta, signature_delta, citations_delta: no OpenAI equivalent
            case "content_block_stop":
                pending = self._pending_input.pop(ev.index, None)
                return self._arguments(ev.index, pending.decode()) if pending else []
            case "message_delta":
                if ev.delta is not None and ev.delta.stop_reason is not None:
                    self._stop_reason = ev.delta.stop_reason
                if ev.usage is not None:
                    self._merge_usage(ev.usage)
                return []
            case "message_stop":
                self.done = True
                return self._finish()
            case "error":
                raise error_from_event(ev.error or ErrorDetail())
        return []  # unknown event types must be ignored (Anthropic's versioning policy)

    def _block_start(self, index: int, block: ContentBlock) -> list[ChatChunk]:
        if block.type == "text":
            return self._text(block.text)
        if block.type != "tool_use":
            return []
        if bytes(block.input).strip() not in (b"", b"{}"):
            self._pending_input[index] = bytes(block.input)
        if self.json_mode and block.name == JSON_TOOL:
            self._json_blocks.add(index)
            return []
        k = self._tool_index[index] = len(self._tool_index)
        call = DeltaToolCall(k, id=block.id, type="function", function=DeltaFunction(block.name, ""))
        return [self._chunk(Delta(tool_calls=[call]))]

    def _text(self, text: str) -> list[ChatChunk]:
        return [self._chunk(Delta(content=text))] if text else []

    def _arguments(self, index: int, piece: str) -> list[ChatChunk]:
        if not piece:
            return []
        if index in self._json_blocks:
            return self._text(piece)
        if index not in self._tool_index:
            return []
        call = DeltaToolCall(self._tool_index[index], function=DeltaFunction(arguments=piece))
        return [self._chunk(Delta(tool_calls=[call]))]

    def _finish(self) -> list[ChatChunk]:
        finish = finish_reason_of(self._stop_reason) or "stop"
        if self._json_blocks and not self._tool_index:
            finish = "stop"  # the forced JSON tool is how the answer came, not a call for the client
        usage = self._usage.to_chat()
        return [self._chunk(Delta(), finish),
                ChatChunk(self.id, self.created, self.model, [], usage=usage)]

    def _merge_usage(self, u: Usage) -> None:
        # message_delta counts are cumulative and may omit fields: keep what it leaves out.
        for field in Usage.__struct_fields__:
            if (value := getattr(u, field)) is not None:
                setattr(self._usage, field, value)

    def _chunk(self, delta: Delta, finish_reason: str | None = None) -> ChatChunk:
        return ChatChunk(self.id, self.created, self.model, [ChunkChoice(0, delta, finish_reason)], usage=UNSET)
