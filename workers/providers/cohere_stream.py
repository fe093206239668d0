"""Cohere /v2/chat stream events → OpenAI chunks: a small state machine, no I/O.

The stream is SSE, each event named in `event:` and typed again in its JSON
(https://docs.cohere.com/v2/docs/streaming): message-start, content-start, content-delta,
content-end, tool-plan-delta, tool-call-start, tool-call-delta, tool-call-end, citation-start,
citation-end, message-end (`delta.finish_reason`, `delta.usage`). A tool call opens whole (id, name,
maybe the first arguments) at tool-call-start, whose `index` counts calls from 0 as OpenAI's does,
and its arguments follow in tool-call-delta fragments. The tool plan is Cohere's reasoning aloud
before calling tools: not the answer, so not sent. message-end is the last event; a body that ends
before it is an error, never a silently truncated answer.
"""

from __future__ import annotations

from broker.wire import ChatChunk, ChunkChoice, Delta, DeltaFunction, DeltaToolCall
from workers.providers import cohere_wire as co
from workers.providers.cohere_translate import decode, finish_reason, usage


class StreamState:
    def __init__(self, model: str) -> None:
        self.model = model
        self.ended = False

    def chunk(self, delta: Delta, finish: str | None = None) -> ChatChunk:
        # id and created are the worker's to set; it rewrites both on every chunk.
        return ChatChunk("", 0, self.model, [ChunkChoice(0, delta, finish)])


def on_event(data: bytes, state: StreamState) -> list[ChatChunk]:
    event: co.StreamEvent = decode(co.event_decoder, data, "stream event")
    delta = event.delta
    message = delta.message if delta is not None else None
    match event.type:
        case "message-start":
            return [state.chunk(Delta(role="assistant", content=""))]
        case "content-delta" if message is not None and message.content is not None and message.content.text:
            return [state.chunk(Delta(content=message.content.text))]
        case "tool-call-start" if message is not None and message.tool_calls is not None:
            call, function = message.tool_calls, message.tool_calls.function or co.RespFunction()
            opened = DeltaToolCall(event.index, call.id or f"call_{event.index}", "function",
                                   DeltaFunction(function.name or "", function.arguments or ""))
            return [state.chunk(Delta(tool_calls=[opened]))]
        case "tool-call-delta" if message is not None and message.tool_calls is not None:
            arguments = (message.tool_calls.function or co.RespFunction()).arguments
            if not arguments:
                return []
            return [state.chunk(Delta(tool_calls=[DeltaToolCall(event.index, function=DeltaFunction(
                arguments=arguments))]))]
        case "message-end":
            state.ended = True
            finish = finish_reason(delta.finish_reason if delta else None, delta.error if delta else None)
            chunks = [state.chunk(Delta(), finish)]
            counted = usage(delta.usage) if delta is not None else None
            if counted is not None:
                chunks.append(ChatChunk("", 0, state.model, [], usage=counted))
            return chunks
    return []  # content-start/-end, tool-plan-delta, tool-call-end, citations, debug: nothing to send


def finished(state: StreamState) -> bool:
    """Whether message-end arrived: the only proof the answer is whole."""
    return state.ended

