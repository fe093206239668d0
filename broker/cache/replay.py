"""Cache entries ⇄ answers: a streamed answer assembled into the JSON body the cache keeps, and a
cached body given back as a hit, as JSON or replayed as the chunks of an SSE stream.

Pure functions over the wire Structs (no I/O). A hit is a new answer: it gets the request's own id
(`chatcmpl-<job id>`, as its x-request-id says) and `usage.cost` 0, since no upstream was paid for it;
the token counts stay those of the answer, which is what they describe. Anthropic Messages have
their own module (replay_messages.py), and so do Responses (replay_responses.py), whose hit is a
new response to its own request: `kept`, `hit_answer` and `hit_events` take the job for that.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET

from broker.cache import replay_messages, replay_responses
from broker.queue.jobs import Job
from broker.queue.payloads import Kind, ResponsesPayload
from broker.wire import (
    ChatChunk,
    ChatCompletion,
    Choice,
    ChunkChoice,
    Delta,
    DeltaFunction,
    DeltaToolCall,
    EmbeddingResponse,
    FunctionCall,
    ResponseMessage,
    TextChoice,
    TextCompletion,
    ToolCall,
    Usage,
    json_encoder,
)
from broker.wire.responses import responses_request_decoder

_chat = msgspec.json.Decoder(ChatCompletion)
_chat_chunk = msgspec.json.Decoder(ChatChunk)
_text = msgspec.json.Decoder(TextCompletion)
_embeddings = msgspec.json.Decoder(EmbeddingResponse)


def _free(usage: Usage | None | msgspec.UnsetType) -> Usage | None:
    return msgspec.structs.replace(usage, cost=0.0) if isinstance(usage, Usage) else None


# ---------------------------------------------------------------- a job's entry and hits


# The kinds whose streamed answer is assembled from its events; a Response stream's Final carries it whole.
FROM_EVENTS: frozenset[Kind] = frozenset({"chat", "text", "messages"})


def kept(kind: Kind, final_body: bytes, events: list[bytes], usage: Usage | None, *,
         streamed: bool) -> bytes | None:
    """What the cache keeps of an answer, from its Final's body, a stream's events and its usage; None if
    there is nothing whole to keep. A Response stream's Final body is its closing events, not the answer."""
    if kind == "responses":
        return replay_responses.assemble(final_body, streamed=streamed)
    return final_body or assemble(kind, events, usage)


def hit_id(job: Job) -> str:
    """A hit's id: a Response's was minted at the door (the store keeps it under it), others are the job's."""
    payload = job.payload
    return payload.response_id if isinstance(payload, ResponsesPayload) else f"{payload.answer_prefix}{job.id}"


def hit_answer(job: Job, entry: bytes, *, now: float) -> bytes:
    """A cached entry as `job`'s own non-streaming answer."""
    payload = job.payload
    if isinstance(payload, ResponsesPayload):
        return replay_responses.hit_body(entry, responses_request_decoder.decode(payload.body),
                                         response_id=payload.response_id, created_at=int(job.created),
                                         completed_at=int(now))
    return hit_body(payload.kind, entry, hit_id(job))


def hit_events(job: Job, entry: bytes, *, now: float) -> list[bytes]:
    """A cached entry as the events of `job`'s own stream."""
    payload = job.payload
    if isinstance(payload, ResponsesPayload):
        return replay_responses.replay(entry, responses_request_decoder.decode(payload.body),
                                       response_id=payload.response_id, created_at=int(job.created),
                                       completed_at=int(now))
    return replay(payload.kind, entry, hit_id(job), wants_usage=payload.wants_usage_chunk)


# ---------------------------------------------------------------- hits by kind


def hit_body(kind: Kind, body: bytes, answer_id: str) -> bytes:
    """A cached body as this request's own non-streaming answer."""
    if kind == "messages":
        return replay_messages.hit_body(body, answer_id)
    if kind == "chat":
        chat = _chat.decode(body)
        return json_encoder.encode(msgspec.structs.replace(chat, id=answer_id, usage=_free(chat.usage)))
    if kind == "text":
        text = _text.decode(body)
        return json_encoder.encode(msgspec.structs.replace(text, id=answer_id, usage=_free(text.usage) or UNSET))
    embeddings = _embeddings.decode(body)
    return json_encoder.encode(msgspec.structs.replace(
        embeddings, usage=msgspec.structs.replace(embeddings.usage, cost=0.0)))


# ---------------------------------------------------------------- assembling a streamed answer


def assemble(kind: Kind, events: list[bytes], usage: Usage | None) -> bytes | None:
    """The JSON body of a streamed answer, from its events and the usage its Final carried;
    None if it is not whole (a choice without a finish reason): only complete answers are kept."""
    if kind == "chat":
        return _assemble_chat(events, usage)
    if kind == "text":
        return _assemble_text(events, usage)
    if kind == "messages":
        return replay_messages.assemble(events)
    return None  # embeddings never stream


class _ChatParts:
    __slots__ = ("content", "refusal", "calls", "finish", "logprobs")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, list[str]] = {}  # index → [id, type, name, arguments...]
        self.finish: str | None = None
        self.logprobs: dict[str, Any] | None = None


def _merge_logprobs(into: dict[str, Any] | None, more: dict[str, Any] | None) -> dict[str, Any] | None:
    """Logprobs arrive as lists split across chunks (chat: content/refusal; text: tokens, offsets...)."""
    if more is None:
        return into
    if into is None:
        return {k: list(v) if isinstance(v, list) else v for k, v in more.items()}
    for k, v in more.items():
        if isinstance(v, list) and isinstance(into.get(k), list):
            into[k].extend(v)
        elif k not in into or into[k] is None:
            into[k] = v
    return into


def _assemble_chat(events: list[bytes], usage: Usage | None) -> bytes | None:
    first: ChatChunk | None = None
    parts: dict[int, _ChatParts] = {}
    for raw in events:
        chunk = _chat_chunk.decode(raw)
        first = first or chunk
        if usage is None and isinstance(chunk.usage, Usage):
            usage = chunk.usage
        for choice in chunk.choices:
            acc = parts.setdefault(choice.index, _ChatParts())
            delta = choice.delta
            if isinstance(delta.content, str):
                acc.content.append(delta.content)
            if isinstance(delta.refusal, str):
                acc.refusal.append(delta.refusal)
            for call in delta.tool_calls or ():
                slot = acc.calls.setdefault(call.index, ["", "function", ""])
                function = call.function if isinstance(call.function, DeltaFunction) else DeltaFunction()
                if isinstance(call.id, str):
                    slot[0] = call.id
                if isinstance(call.type, str):
                    slot[1] = call.type
                if isinstance(function.name, str):
                    slot[2] = function.name
                if isinstance(function.arguments, str):
                    slot.append(function.arguments)
            acc.finish = choice.finish_reason or acc.finish
            acc.logprobs = _merge_logprobs(acc.logprobs, choice.logprobs)
    if first is None or not parts or any(acc.finish is None for acc in parts.values()):
        return None
    choices = []
    for index in sorted(parts):
        acc = parts[index]
        calls = [ToolCall(slot[0], FunctionCall(slot[2], "".join(slot[3:])), slot[1])
                 for _, slot in sorted(acc.calls.items())]
        text = "".join(acc.content)
        content = text if text or (acc.content and not calls) else None
        message = ResponseMessage(content, refusal="".join(acc.refusal) or None, tool_calls=calls or UNSET)
        choices.append(Choice(index, message, acc.finish, acc.logprobs))
    return json_encoder.encode(ChatCompletion(first.id, first.created, first.model, choices, usage,
                                              system_fingerprint=first.system_fingerprint))


def _assemble_text(events: list[bytes], usage: Usage | None) -> bytes | None:
    first: TextCompletion | None = None
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    logprobs: dict[int, dict[str, Any] | None] = {}
    for raw in events:
        chunk = _text.decode(raw)
        first = first or chunk
        if usage is None and isinstance(chunk.usage, Usage):
            usage = chunk.usage
        for choice in chunk.choices:
            texts.setdefault(choice.index, []).append(choice.text)
            finish[choice.index] = choice.finish_reason or finish.get(choice.index)
            logprobs[choice.index] = _merge_logprobs(logprobs.get(choice.index), choice.logprobs)
    if first is None or not texts or any(reason is None for reason in finish.values()):
        return None
    choices = [TextChoice(i, "".join(texts[i]), finish[i], logprobs[i]) for i in sorted(texts)]
    return json_encoder.encode(TextCompletion(first.id, first.created, first.model, choices,
                                              usage=usage or UNSET, system_fingerprint=first.system_fingerprint))


# ---------------------------------------------------------------- replaying a body as a stream


def replay(kind: Kind, body: bytes, answer_id: str, *, wants_usage: bool) -> list[bytes]:
    """A cached body as the events of a stream, as the worker would have sent them: a role chunk, the
    content, tool calls whole (their first fragment may carry every field), the finish chunk, then the
    usage chunk if asked for (https://platform.openai.com/docs/api-reference/chat-streaming)."""
    if kind == "text":
        return _replay_text(body, answer_id, wants_usage)
    if kind == "messages":
        return replay_messages.replay(body, answer_id)
    chat = _chat.decode(body)
    marker = None if wants_usage else UNSET  # OpenAI's "usage": null on every chunk once usage is asked

    def chunk(choice: ChunkChoice) -> bytes:
        return json_encoder.encode(ChatChunk(answer_id, chat.created, chat.model, [choice], usage=marker,
                                             system_fingerprint=chat.system_fingerprint))

    events = []
    for choice in chat.choices:
        message = choice.message
        events.append(chunk(ChunkChoice(choice.index, Delta(role="assistant", content="", refusal=None))))
        if message.content:
            events.append(chunk(ChunkChoice(choice.index, Delta(content=message.content), logprobs=choice.logprobs)))
        if message.refusal:
            events.append(chunk(ChunkChoice(choice.index, Delta(refusal=message.refusal))))
        if message.tool_calls:
            events.append(chunk(ChunkChoice(choice.index, Delta(tool_calls=[
                DeltaToolCall(i, call.id, call.type, DeltaFunction(call.function.name, call.function.arguments))
                for i, call in enumerate(message.tool_calls)]))))
        events.append(chunk(ChunkChoice(choice.index, Delta(), choice.finish_reason)))
    usage = _free(chat.usage)
    if wants_usage and usage is not None:
        events.append(json_encoder.encode(ChatChunk(answer_id, chat.created, chat.model, [], usage=usage,
                                                    system_fingerprint=chat.system_fingerprint)))
    return events


def _replay_text(body: bytes, answer_id: str, wants_usage: bool) -> list[bytes]:
    text = _text.decode(body)
    marker = None if wants_usage else UNSET

    def chunk(choice: TextChoice) -> bytes:
        return json_encoder.encode(TextCompletion(answer_id, text.created, text.model, [choice], usage=marker,
                                                  system_fingerprint=text.system_fingerprint))

    events = []
    for choice in text.choices:
        events.append(chunk(TextChoice(choice.index, choice.text, None, choice.logprobs)))
        events.append(chunk(TextChoice(choice.index, "", choice.finish_reason)))
    usage = _free(text.usage)
    if wants_usage and usage is not None:
        events.append(json_encoder.encode(TextCompletion(answer_id, text.created, text.model, [], usage=usage)))
    return events
