"""Gemini `streamGenerateContent?alt=sse` events → OpenAI chunks: a small state machine, no I/O.

Each SSE event is a whole GenerateContentResponse holding only the new parts,
and the stream has no `[DONE]`: it ends with the HTTP body. Some models put
`finishReason` on every event, and usageMetadata arrives on many of them
(recorded traffic shows it cumulative on each), so both are only remembered
here and sent once the body has ended (`on_end`): one finish chunk, then one
usage chunk from the last usageMetadata seen. A body that ends before any
candidate finished is an error, never a silently truncated answer.

Function calls arrive whole, one part each, so every call is a single
tool_call delta carrying id, name and all arguments, indexed from 0 per choice.
"""

from __future__ import annotations

from msgspec import UNSET

from broker.errors import UpstreamError, redact
from broker.wire import (
    ChatChunk,
    ChunkChoice,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    Usage,
)
from workers.providers.gemini_translate import (
    decode_response,
    finish_reason,
    tool_calls,
    usage,
)

_PROMPT_BLOCKED = "PROMPT_BLOCKED"  # our marker: no candidate, promptFeedback.blockReason set


class StreamState:
    def __init__(self, model: str) -> None:
        self.model = model
        self.response_id = ""
        self.started: list[int] = []  # choice indexes whose role chunk went out, in order
        self.calls: dict[int, int] = {}  # tool calls sent so far, per choice
        self.finish: dict[int, str] = {}  # the last Gemini finishReason seen, per choice
        self.usage: Usage | None = None

    def chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> ChatChunk:
        # id and created are the worker's to set; it rewrites both on every chunk.
        return ChatChunk("", 0, self.model, choices, usage=usage if usage is not None else UNSET)

    def start(self, index: int) -> list[ChatChunk]:
        if index in self.started:
            return []
        self.started.append(index)
        return [self.chunk([ChunkChoice(index, Delta(role="assistant", content=""))])]


def on_event(data: bytes, state: StreamState) -> list[ChatChunk]:
    resp = decode_response(data)
    if resp.error is not None:
        raise UpstreamError(f"Gemini error mid-stream ({resp.error.status or resp.error.code}): "
                            f"{redact(resp.error.message)}", retryable=True)
    state.response_id = state.response_id or resp.response_id
    if resp.usage_metadata is not None:
        state.usage = usage(resp.usage_metadata)
    chunks: list[ChatChunk] = []
    if not resp.candidates and resp.prompt_feedback is not None and resp.prompt_feedback.block_reason:
        chunks += state.start(0)
        state.finish[0] = _PROMPT_BLOCKED
    for position, candidate in enumerate(resp.candidates):
        index = candidate.index if candidate.index is not None else position
        chunks += state.start(index)
        parts = candidate.content.parts if candidate.content else []
        text = "".join(p.text for p in parts if p.text is not None and not p.thought)
        if text:
            chunks.append(state.chunk([ChunkChoice(index, Delta(content=text))]))
        first = state.calls.get(index, 0)
        calls = tool_calls(parts, state.response_id, first=first)
        if calls:
            state.calls[index] = first + len(calls)
            deltas = [DeltaToolCall(first + k, c.id, "function", DeltaFunction(c.function.name, c.function.arguments))
                      for k, c in enumerate(calls)]
            chunks.append(state.chunk([ChunkChoice(index, Delta(tool_calls=deltas))]))
        if candidate.finish_reason:
            state.finish[index] = candidate.finish_reason
    return chunks


def on_end(state: StreamState) -> list[ChatChunk]:
    """The body ended: the finish chunk and the usage chunk, or an error if the answer is incomplete."""
    if not state.started:
        raise UpstreamError("Gemini ended the stream without an answer", retryable=True)
    if any(index not in state.finish for index in state.started):
        raise UpstreamError("Gemini ended the stream before the answer finished", retryable=True)
    finishes = [
        ChunkChoice(i, Delta(), "content_filter" if state.finish[i] == _PROMPT_BLOCKED
                    else finish_reason(state.finish[i], state.calls.get(i, 0) > 0))
        for i in state.started
    ]
    chunks = [state.chunk(finishes)]
    if state.usage is not None:
        chunks.append(state.chunk([], state.usage))
    return chunks
