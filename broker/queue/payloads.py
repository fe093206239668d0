"""What a job asks of a provider: exactly one payload, a tagged union of the request types.

A Job carries one of these. The tag travels on the wire (msgpack `["chat", {...}]`), so a
worker decodes the right request type without looking inside, and handlers are found by
payload type (workers/handlers.py), never by testing which of several fields is set.

The request Structs themselves stay untagged: they are also the inbound JSON bodies and are
re-encoded to upstreams, where a tag field would be an unknown parameter. A payload wraps one.

Adding an endpoint: its request Struct in broker/wire/, a payload here (one class, one line in
PAYLOAD_OF), and a handler registered for it in workers/handlers.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import msgspec

from broker.wire import ChatRequest, CompletionRequest, EmbeddingRequest
from broker.wire.audio import SPEECH_MEDIA_TYPES, SpeechRequest, TranscriptionRequest
from broker.wire.images import ImageRequest
from broker.wire.moderations import ModerationRequest
from broker.wire.rerank import RerankRequest

# What the response cache stores and replays for a payload (broker/cache/replay.py).
Kind = Literal["chat", "text", "embedding", "messages", "count_tokens", "responses", "image", "moderation",
               "transcription", "speech", "rerank"]
# How its answer is written to the client: OpenAI's SSE (`data:` lines, `[DONE]`) or Anthropic's
# (`event:` + `data:` per event, no terminator). The API frames a stream by it (api/sse.py).
# `audio`: raw bytes, no framing (/v1/audio/speech).
Dialect = Literal["openai", "anthropic", "responses", "audio"]


class _Streamed:
    """A payload whose request streams when its client asks (`stream: true`)."""

    __slots__ = ()
    request: ChatRequest | CompletionRequest

    @property
    def streams(self) -> bool:
        return self.request.stream


class _OpenAIStreamed(_Streamed):
    """Chat's and legacy completions' streams end with a usage chunk when the client asks for one."""

    __slots__ = ()

    @property
    def wants_usage_chunk(self) -> bool:
        return self.request.wants_usage_chunk()


class ChatPayload(_OpenAIStreamed, msgspec.Struct, tag="chat", array_like=True, frozen=True):
    """POST /v1/chat/completions."""

    request: ChatRequest
    kind: ClassVar[Kind] = "chat"
    answer_prefix: ClassVar[str] = "chatcmpl-"  # the answer id's prefix, as OpenAI's
    dialect: ClassVar[Dialect] = "openai"
    background: ClassVar[bool] = False  # runs as an async job whatever the client's Prefer header says
    cacheable: ClassVar[bool] = True  # the response cache stores and replays its kind (broker/cache/replay.py)



class CompletionPayload(_OpenAIStreamed, msgspec.Struct, tag="completion", array_like=True, frozen=True):
    """POST /v1/completions (legacy text completions)."""

    request: CompletionRequest
    kind: ClassVar[Kind] = "text"
    answer_prefix: ClassVar[str] = "cmpl-"
    dialect: ClassVar[Dialect] = "openai"
    background: ClassVar[bool] = False
    cacheable: ClassVar[bool] = True



class EmbeddingPayload(msgspec.Struct, tag="embedding", array_like=True, frozen=True):
    """POST /v1/embeddings: never streamed."""

    request: EmbeddingRequest
    kind: ClassVar[Kind] = "embedding"
    answer_prefix: ClassVar[str] = ""  # an embeddings answer has no id
    dialect: ClassVar[Dialect] = "openai"
    background: ClassVar[bool] = False
    cacheable: ClassVar[bool] = True
    streams: ClassVar[bool] = False
    wants_usage_chunk: ClassVar[bool] = False


class RerankPayload(msgspec.Struct, tag="rerank", array_like=True, frozen=True):
    """POST /v1/rerank: never streamed. Not cached: the response cache replays chat, text and vectors only."""

    request: RerankRequest
    kind: ClassVar[Kind] = "rerank"
    answer_prefix: ClassVar[str] = "rerank-"
    dialect: ClassVar[Dialect] = "openai"
    background: ClassVar[bool] = False
    cacheable: ClassVar[bool] = False
    streams: ClassVar[bool] = False
    wants_usage_chunk: ClassVar[bool] = False


class MessagesPayload(_Streamed, msgspec.Struct, tag="messages", array_like=True, frozen=True):
    """POST /v1/messages (Anthropic's Messages API, served inbound).

    `body` is the client's request exactly as received: an Anthropic deployment gets it as it is
    (field order, unknown fields, thinking signatures and cache_control markers intact), with only
    its model swapped. `request` is the same request as Chat Completions, for everything else:
    routing, limits and budgets read it like any chat job, and other providers are called with it
    (their answer translated back to a Message by the worker). `beta` is the client's
    `anthropic-beta` header, forwarded to Anthropic deployments only.
    """

    request: ChatRequest
    body: bytes
    beta: str = ""
    kind: ClassVar[Kind] = "messages"
    answer_prefix: ClassVar[str] = "msg_"
    dialect: ClassVar[Dialect] = "anthropic"
    background: ClassVar[bool] = False
    cacheable: ClassVar[bool] = True

    @property
    def wants_usage_chunk(self) -> bool:
        return False  # an Anthropic stream carries usage in message_start and message_delta


class CountTokensPayload(msgspec.Struct, tag="count_tokens", array_like=True, frozen=True):
    """POST /v1/messages/count_tokens: the body as received, for an Anthropic deployment to count
    (https://docs.anthropic.com/en/api/messages-count-tokens); `request`, its Chat form, for any other
    to estimate by admission's rules. Never streamed, never billed."""

    request: ChatRequest
    body: bytes
    beta: str = ""
    kind: ClassVar[Kind] = "count_tokens"
    answer_prefix: ClassVar[str] = ""
    dialect: ClassVar[Dialect] = "anthropic"
    background: ClassVar[bool] = False
    cacheable: ClassVar[bool] = False
    streams: ClassVar[bool] = False
    wants_usage_chunk: ClassVar[bool] = False


class ResponsesPayload(_Streamed, msgspec.Struct, tag="responses", array_like=True, frozen=True):
    """POST /v1/responses (OpenAI's Responses API, served for every model).

    `request` is its Chat Completions form, earlier turns of `previous_response_id` included: routing,
    limits, failover and the ledger treat it as a chat job, and the provider is called with it. `body`
    is the client's request as sent (the Response echoes its settings); `response_id` the id it answers
    with, minted at the door.
    """

    request: ChatRequest
    body: bytes
    response_id: str
    background: bool = False  # `background: true`: an async job, answered at once with status `queued`
    # For a deployment that speaks the Responses API itself: the body to send it when it is not `body`
    # (earlier turns inlined as `input`, `background` left out: broker/inbound/responses_native.py).
    native: bytes = b""
    # Only such a deployment can serve it (built-in tools, OpenAI's own items): routing requires one.
    native_only: bool = False
    # Stored at its end by the worker that answers it, with its reply (broker/queue/stored_responses.py):
    # `store` was not false and it is no background one. `earlier`: the earlier turns' items, a JSON array.
    keep: bool = False
    earlier: bytes = b""
    kind: ClassVar[Kind] = "responses"
    answer_prefix: ClassVar[str] = "resp_"
    dialect: ClassVar[Dialect] = "responses"

    @property
    def wants_usage_chunk(self) -> bool:
        return False  # usage rides on response.completed

    @property
    def cacheable(self) -> bool:
        """The completed Response is kept whole, and a hit is a new response to its own request
        (broker/cache/replay_responses.py); not when only a Responses-speaking upstream can answer it:
        a built-in tool's results (a web search) depend on more than the request."""
        return not self.native_only

    @property
    def requires(self) -> dict[str, str]:
        """Capabilities its Chat form does not show (capability → the field that needs it)."""
        return {"responses_api": "tools"} if self.native_only else {}


class _Unstreamed:
    """A media payload answered in one body: never streamed, never cached (a new image or transcript
    each time is what the client pays for), not run in the background unless the client asks."""

    __slots__ = ()
    answer_prefix: ClassVar[str] = ""
    dialect: ClassVar[Dialect] = "openai"
    background: ClassVar[bool] = False
    cacheable: ClassVar[bool] = False
    streams: ClassVar[bool] = False
    wants_usage_chunk: ClassVar[bool] = False


class ImagePayload(_Unstreamed, msgspec.Struct, tag="image", array_like=True, frozen=True):
    """POST /v1/images/generations. `body` is the client's JSON, sent up with only `model` swapped."""

    request: ImageRequest
    body: bytes
    kind: ClassVar[Kind] = "image"


class ModerationPayload(_Unstreamed, msgspec.Struct, tag="moderation", array_like=True, frozen=True):
    """POST /v1/moderations. `body` is the client's JSON, sent up with only `model` swapped."""

    request: ModerationRequest
    body: bytes
    kind: ClassVar[Kind] = "moderation"


class TranscriptionPayload(_Unstreamed, msgspec.Struct, tag="transcription", array_like=True, frozen=True):
    """POST /v1/audio/transcriptions and /translations: the form's fields, and the audio by reference
    (`request.file`, spooled by the API: broker/queue/spool.py)."""

    request: TranscriptionRequest
    kind: ClassVar[Kind] = "transcription"


class SpeechPayload(msgspec.Struct, tag="speech", array_like=True, frozen=True):
    """POST /v1/audio/speech: always streamed, as raw audio bytes relayed while they arrive."""

    request: SpeechRequest
    body: bytes
    kind: ClassVar[Kind] = "speech"
    answer_prefix: ClassVar[str] = ""
    dialect: ClassVar[Dialect] = "audio"
    background: ClassVar[bool] = False
    cacheable: ClassVar[bool] = False
    streams: ClassVar[bool] = True
    wants_usage_chunk: ClassVar[bool] = False

    @property
    def media_type(self) -> str:
        return SPEECH_MEDIA_TYPES[self.request.response_format]


Payload = (ChatPayload | CompletionPayload | EmbeddingPayload | MessagesPayload | CountTokensPayload
           | ResponsesPayload | ImagePayload | ModerationPayload | TranscriptionPayload | SpeechPayload
           | RerankPayload)
MediaRequest = ImageRequest | ModerationRequest | TranscriptionRequest | SpeechRequest
AnyRequest = ChatRequest | CompletionRequest | EmbeddingRequest | MediaRequest | RerankRequest

PAYLOAD_OF: dict[type[AnyRequest], Callable[[Any], Payload]] = {
    ChatRequest: ChatPayload,
    CompletionRequest: CompletionPayload,
    EmbeddingRequest: EmbeddingPayload,
    RerankRequest: RerankPayload,
}


def payload_for(request: AnyRequest) -> Payload:
    """The payload that carries `request`."""
    return PAYLOAD_OF[type(request)](request)
