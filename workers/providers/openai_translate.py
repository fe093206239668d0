"""Pure translation for OpenAI-compatible upstreams: request shaping by profile, responses, errors.

No I/O here, so golden tests check it from recorded payloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from broker.errors import UpstreamError, redact
from broker.routing.profiles import Profile
from broker.wire import (
    ChatChunk,
    ChatCompletion,
    ChatRequest,
    ChunkChoice,
    CompletionRequest,
    EmbeddingRequest,
    StreamOptions,
    TextChoice,
    TextCompletion,
    Usage,
    json_encoder,
)


class UpstreamErrorBody(msgspec.Struct):
    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | int | None = None  # vLLM and OpenRouter send an int


class UpstreamErrorEnvelope(msgspec.Struct):
    error: UpstreamErrorBody | str | None = None
    message: str | None = None  # older vLLM: a flat error object


class ChatEvent(msgspec.Struct):
    """One `data:` event of an upstream chat stream: a chunk, or an error after the 200."""

    id: str = ""
    created: int = 0
    model: str = ""
    choices: list[ChunkChoice] = []
    usage: Usage | None = None
    system_fingerprint: str | None = None
    error: UpstreamErrorBody | None = None
    prompt_filter_results: list[dict[str, Any]] | UnsetType = UNSET  # Azure OpenAI's, on a chunk of its own


class TextEvent(msgspec.Struct):
    id: str = ""
    created: int = 0
    model: str = ""
    choices: list[TextChoice] = []
    usage: Usage | None = None
    error: UpstreamErrorBody | None = None


class UpstreamEmbedding(msgspec.Struct):
    index: int
    embedding: list[float]


class UpstreamEmbeddingUsage(msgspec.Struct):
    prompt_tokens: int = 0


class UpstreamEmbeddings(msgspec.Struct):
    data: list[UpstreamEmbedding]
    usage: UpstreamEmbeddingUsage | None = None


_chat_event = msgspec.json.Decoder(ChatEvent)
_text_event = msgspec.json.Decoder(TextEvent)
_chat_completion = msgspec.json.Decoder(ChatCompletion)
_text_completion = msgspec.json.Decoder(TextCompletion)
_embeddings = msgspec.json.Decoder(UpstreamEmbeddings)
_error = msgspec.json.Decoder(UpstreamErrorEnvelope)

R = TypeVar("R", ChatRequest, CompletionRequest)


def shape_request(req: R, *, model: str, stream: bool, stream_usage: bool, profile: Profile) -> bytes:
    """The upstream body: its model id, usage asked for on streams, and the profile's adaptations."""
    options = req.stream_options if stream else UNSET  # OpenAI rejects stream_options without stream
    if stream and stream_usage and profile.stream_usage:
        # Add include_usage, keep the client's other options (include_obfuscation: false saves bytes).
        given = req.stream_options if isinstance(req.stream_options, StreamOptions) else StreamOptions()
        options = msgspec.structs.replace(given, include_usage=True)
    elif not profile.stream_usage:
        options = UNSET
    extras = req.extra_body if isinstance(req.extra_body, dict) else None
    shaped = msgspec.structs.replace(req, model=model, stream=stream, stream_options=options, extra_body=UNSET)
    if extras is None and not (profile.drop or profile.rename or profile.drop_message_fields
                               or profile.chat_fields is not None or not profile.max_completion_tokens):
        return json_encoder.encode(shaped)  # the common case: no dict round trip
    body = msgspec.to_builtins(shaped)
    if extras:  # the client's own extensions go to the server as top-level fields; ours win a clash
        body = {**extras, **body}
    body = adapt(body, profile)
    if profile.chat_fields is not None and isinstance(req, ChatRequest):
        body = {name: value for name, value in body.items() if name in profile.chat_fields}
    return json_encoder.encode(body)


def adapt(body: dict[str, Any], profile: Profile) -> dict[str, Any]:
    for name in profile.drop:
        body.pop(name, None)
    if profile.drop_message_fields and isinstance(body.get("messages"), list):
        for message in body["messages"]:
            for name in profile.drop_message_fields:
                message.pop(name, None)
    for ours, theirs in profile.rename:
        if ours in body:
            body[theirs] = body.pop(ours)
    if not profile.max_completion_tokens and "max_completion_tokens" in body:
        limit = body.pop("max_completion_tokens")
        body.setdefault("max_tokens", limit)
    return body


def shape_embeddings(req: EmbeddingRequest, *, model: str, profile: Profile) -> bytes:
    # Always floats from the upstream: the worker encodes for the client.
    shaped = msgspec.structs.replace(req, model=model, encoding_format="float")
    return json_encoder.encode(adapt(msgspec.to_builtins(shaped), profile))


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    message = f"upstream returned HTTP {status}"
    code = param = None
    try:
        envelope = _error.decode(body)
        detail = envelope.error
        if isinstance(detail, UpstreamErrorBody):
            message = detail.message or message
            param = detail.param
            # An upstream 401/403 is our credential's problem: its `invalid_api_key` code would make
            # the client doubt its own key (the status becomes 502 for the same reason).
            code = detail.code if isinstance(detail.code, str) and status not in (401, 403) else None
        elif isinstance(detail, str):
            message = detail
        elif envelope.message:
            message = envelope.message
    except msgspec.DecodeError:
        pass
    return UpstreamError.for_status(status, f"upstream error ({status}): {redact(message)}", param=param, code=code,
                                    retry_after_s=retry_after_s(headers))


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms` when sent (OpenAI and Azure OpenAI send it: the finer of the two), else
    `retry-after` in seconds."""
    for name, per_s in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / per_s
        except ValueError:
            continue
    return None


def _decode(decoder: msgspec.json.Decoder[Any], data: bytes, what: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"upstream sent an invalid {what}: {exc}", retryable=True) from None


def _raise_if_error(error: UpstreamErrorBody | None) -> None:
    if error is not None:
        raise UpstreamError(f"upstream error mid-stream: {redact(error.message or 'unknown error')}",
                            code=error.code if isinstance(error.code, str) else None, retryable=True)


def chat_chunk(data: bytes) -> ChatChunk:
    event: ChatEvent = _decode(_chat_event, data, "stream event")
    _raise_if_error(event.error)
    return ChatChunk(event.id, event.created, event.model, event.choices, usage=event.usage or UNSET,
                     system_fingerprint=event.system_fingerprint or UNSET,
                     prompt_filter_results=event.prompt_filter_results)


def text_chunk(data: bytes) -> TextCompletion:
    event: TextEvent = _decode(_text_event, data, "stream event")
    _raise_if_error(event.error)
    return TextCompletion(event.id, event.created, event.model, event.choices, usage=event.usage or UNSET)


def chat_completion(body: bytes) -> ChatCompletion:
    result: ChatCompletion = _decode(_chat_completion, body, "completion")
    return result


def text_completion(body: bytes) -> TextCompletion:
    result: TextCompletion = _decode(_text_completion, body, "completion")
    return result


def embeddings(body: bytes, inputs: int) -> tuple[list[list[float]], int]:
    result: UpstreamEmbeddings = _decode(_embeddings, body, "embeddings response")
    vectors = [item.embedding for item in sorted(result.data, key=lambda item: item.index)]
    if len(vectors) != inputs:
        raise UpstreamError(f"upstream returned {len(vectors)} embeddings for {inputs} inputs", retryable=True)
    return vectors, result.usage.prompt_tokens if result.usage else 0


class StreamRepair:
    """Per-stream fixes that make a compatible server's deltas safe for the SDK's accumulator.

    The openai SDK concatenates every string field of every delta and matches
    tool calls by `index` (`accumulate_delta` in its `src/openai/lib/streaming/_deltas.py`). Some
    servers (older Ollama) repeat
    `role` on every chunk and send each parallel call whole at index 0, which
    the SDK would merge into "assistantassistant" and one garbled call. Here
    `role` is kept only on a choice's first delta, and each new tool-call id
    gets the next index; fragments without an id follow their call's index.
    OpenAI's own streams pass through unchanged.
    """

    def __init__(self) -> None:
        self._has_role: set[int] = set()
        self._by_id: dict[tuple[int, str], int] = {}
        self._current: dict[tuple[int, int], int] = {}
        self._next: dict[int, int] = {}

    def __call__(self, chunk: ChatChunk) -> ChatChunk:
        for choice in chunk.choices:
            delta = choice.delta
            if delta.role is not UNSET:
                if choice.index in self._has_role:
                    delta.role = UNSET
                else:
                    self._has_role.add(choice.index)
            if isinstance(delta.tool_calls, list):
                for call in delta.tool_calls:
                    if isinstance(call.id, str):
                        key = (choice.index, call.id)
                        if key not in self._by_id:
                            self._by_id[key] = self._next.get(choice.index, 0)
                            self._next[choice.index] = self._by_id[key] + 1
                        self._current[(choice.index, call.index)] = self._by_id[key]
                        call.index = self._by_id[key]
                    else:
                        call.index = self._current.get((choice.index, call.index), call.index)
        return chunk
