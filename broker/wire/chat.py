"""OpenAI Chat Completions wire types: request, response and chunk Structs; models.

Inbound bodies are lenient (a field we do not model is kept aside in
`extra_body` for OpenAI-compatible upstreams, so the next SDK release or a
server's own extensions do not break clients) but what we do read is validated; the decode path of a
`msgspec.ValidationError` becomes the OpenAI error's `param`. Optional fields
default to UNSET so re-encoding a request forwards exactly what the client sent.
Every field: https://platform.openai.com/docs/api-reference/chat/create, and the `openai` SDK's
`src/openai/types/chat/completion_create_params.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

# ---------------------------------------------------------------- request


class TextPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ImageUrl(msgspec.Struct, omit_defaults=True):
    url: str
    detail: str | UnsetType = UNSET


class ImageUrlPart(msgspec.Struct, tag_field="type", tag="image_url"):
    image_url: ImageUrl


class InputAudioPart(msgspec.Struct, tag_field="type", tag="input_audio"):
    input_audio: dict[str, Any]  # {data, format}: passed through untouched


class FilePart(msgspec.Struct, tag_field="type", tag="file"):
    file: dict[str, Any]  # {file_id} | {file_data, filename}: passed through untouched


class RefusalPart(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


ContentPart = TextPart | ImageUrlPart | InputAudioPart | FilePart | RefusalPart


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str  # a JSON *string*, possibly invalid JSON, as OpenAI defines it


class ToolCall(msgspec.Struct):
    id: str
    function: FunctionCall
    type: str = "function"


Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Message(msgspec.Struct, omit_defaults=True):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | UnsetType = UNSET
    tool_calls: list[ToolCall] | UnsetType = UNSET
    tool_call_id: str | UnsetType = UNSET
    refusal: str | None | UnsetType = UNSET
    function_call: FunctionCall | None | UnsetType = UNSET

    def __post_init__(self) -> None:
        # msgspec turns these into ValidationErrors carrying the message's path.
        if self.role == "tool" and self.tool_call_id is UNSET:
            raise ValueError("tool messages require `tool_call_id`")
        if self.role in ("system", "developer", "user", "tool") and self.content is None:
            raise ValueError(f"{self.role} messages require `content`")

    def text(self) -> str:
        """The message's text parts joined (what a tokenizer estimate counts)."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


FUNCTION_NAME = r"^[a-zA-Z0-9_\-]{1,64}$"  # OpenAI's rule for tool names


class FunctionDef(msgspec.Struct, omit_defaults=True):
    name: Annotated[str, Meta(pattern=FUNCTION_NAME)]
    description: str | UnsetType = UNSET
    parameters: dict[str, Any] | UnsetType = UNSET  # a JSON Schema: passed through untouched
    strict: bool | None | UnsetType = UNSET


class Tool(msgspec.Struct):
    function: FunctionDef
    type: str = "function"


class StreamOptions(msgspec.Struct, omit_defaults=True):
    include_usage: bool | UnsetType = UNSET
    include_obfuscation: bool | UnsetType = UNSET


Temperature = Annotated[float, Meta(ge=0, le=2)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
# Every integer is held to 64 bits (what the Job's msgpack, and upstreams, can carry): beyond
# that msgspec would hand us a Python bigint that fails later, far from the field that sent it.
Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
PositiveInt = Annotated[int, Meta(ge=1, le=2**63 - 1)]
TokenId = Annotated[int, Meta(ge=0, le=2**32 - 1)]
LogitBias = dict[str, Annotated[int, Meta(ge=-100, le=100)]]  # OpenAI's range


class ChatRequest(msgspec.Struct, omit_defaults=True):
    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None | UnsetType = UNSET
    temperature: Temperature | None | UnsetType = UNSET
    top_p: Annotated[float, Meta(ge=0, le=1)] | None | UnsetType = UNSET
    n: Annotated[int, Meta(ge=1, le=128)] | None | UnsetType = UNSET
    stop: str | Annotated[list[str], Meta(max_length=4)] | None | UnsetType = UNSET
    max_tokens: PositiveInt | None | UnsetType = UNSET
    max_completion_tokens: PositiveInt | None | UnsetType = UNSET
    presence_penalty: Penalty | None | UnsetType = UNSET
    frequency_penalty: Penalty | None | UnsetType = UNSET
    logit_bias: LogitBias | None | UnsetType = UNSET
    logprobs: bool | None | UnsetType = UNSET
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None | UnsetType = UNSET
    seed: Int64 | None | UnsetType = UNSET
    user: str | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_choice: str | dict[str, Any] | UnsetType = UNSET
    parallel_tool_calls: bool | UnsetType = UNSET
    response_format: dict[str, Any] | UnsetType = UNSET
    metadata: dict[str, str] | None | UnsetType = UNSET
    store: bool | None | UnsetType = UNSET
    reasoning_effort: str | None | UnsetType = UNSET
    service_tier: str | None | UnsetType = UNSET
    modalities: list[str] | None | UnsetType = UNSET
    prediction: dict[str, Any] | None | UnsetType = UNSET
    verbosity: str | None | UnsetType = UNSET
    prompt_cache_key: str | UnsetType = UNSET
    safety_identifier: str | UnsetType = UNSET
    # Common extensions of self-hosted servers (vLLM, llama.cpp, Ollama).
    top_k: Int64 | None | UnsetType = UNSET
    min_p: float | None | UnsetType = UNSET
    repetition_penalty: float | None | UnsetType = UNSET
    # Every other field the client sent (the SDK's `extra_body`: vLLM's `guided_json`,
    # `chat_template_kwargs`, OpenRouter's `provider`...), filled in by api/decode.py.
    # Forwarded to OpenAI-compatible upstreams only, never as a field of its own.
    extra_body: dict[str, Any] | UnsetType = UNSET

    def __post_init__(self) -> None:
        # Pass-through objects, except for the parts every adapter reads: OpenAI refuses these
        # shapes too, and past this point they would crash a worker instead of answering a 400.
        if isinstance(self.tool_choice, dict) and "function" in self.tool_choice:
            function = self.tool_choice["function"]
            if not (isinstance(function, dict) and isinstance(function.get("name"), str)):
                raise ValueError("`tool_choice.function` must be an object with a string `name`")
        if isinstance(self.response_format, dict) and "json_schema" in self.response_format:
            if not isinstance(self.response_format["json_schema"], dict):
                raise ValueError("`response_format.json_schema` must be an object")

    def output_limit(self) -> int | None:
        for value in (self.max_completion_tokens, self.max_tokens):
            if isinstance(value, int):
                return value
        return None

    def wants_usage_chunk(self) -> bool:
        return isinstance(self.stream_options, StreamOptions) and self.stream_options.include_usage is True


# ---------------------------------------------------------------- response


class Usage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: Int64
    completion_tokens: Int64
    total_tokens: Int64
    prompt_tokens_details: dict[str, Any] | None | UnsetType = UNSET
    completion_tokens_details: dict[str, Any] | None | UnsetType = UNSET
    cost: float | None | UnsetType = UNSET  # USD, set by the broker (broker/money/pricing.py), OpenRouter's field
    # A rerank's billed searches (Cohere's `billed_units.search_units`, else estimated): priced per search, not
    # per token. Never set on chat, so never written there.
    search_units: Int64 | UnsetType = UNSET

    def prompt_detail(self, name: str) -> int:
        """A count from `prompt_tokens_details` (`cached_tokens`, `cache_write_tokens`), 0 if absent:
        the details are passed through from upstreams, so anything but a positive int reads as none."""
        return _positive(self.prompt_tokens_details, name)

    def completion_detail(self, name: str) -> int:
        """A count from `completion_tokens_details` (`reasoning_tokens`, ...), 0 if absent."""
        return _positive(self.completion_tokens_details, name)


def _positive(details: object, name: str) -> int:
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class ResponseMessage(msgspec.Struct):
    content: str | None = None  # Azure may leave it out of an answer its content filter stopped
    role: str = "assistant"
    refusal: str | None = None
    tool_calls: list[ToolCall] | UnsetType = UNSET
    annotations: list[dict[str, Any]] | UnsetType = UNSET  # e.g. url citations: passed through untouched


class Choice(msgspec.Struct):
    index: Int64
    message: ResponseMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None
    # Azure OpenAI's content filter verdicts, passed through untouched: the client reads why an answer
    # stopped at `content_filter` (https://learn.microsoft.com/azure/ai-foundry/openai/concepts/content-filter).
    content_filter_results: dict[str, Any] | UnsetType = UNSET


class ChatCompletion(msgspec.Struct):
    id: str
    created: Int64
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    object: str = "chat.completion"
    system_fingerprint: str | None | UnsetType = UNSET
    service_tier: str | None | UnsetType = UNSET
    prompt_filter_results: list[dict[str, Any]] | UnsetType = UNSET  # Azure: the verdicts on the prompt


# ---------------------------------------------------------------- streaming


class DeltaFunction(msgspec.Struct, omit_defaults=True):
    name: str | UnsetType = UNSET
    arguments: str | UnsetType = UNSET


class DeltaToolCall(msgspec.Struct, omit_defaults=True):
    index: Int64
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: DeltaFunction | UnsetType = UNSET


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | UnsetType = UNSET
    content: str | None | UnsetType = UNSET
    refusal: str | None | UnsetType = UNSET
    tool_calls: list[DeltaToolCall] | UnsetType = UNSET


class ChunkChoice(msgspec.Struct):
    index: Int64
    # Azure's asynchronous filter sends choices that annotate text already streamed, with no delta.
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None
    content_filter_results: dict[str, Any] | UnsetType = UNSET  # Azure, as on Choice
    content_filter_offsets: dict[str, Any] | UnsetType = UNSET  # Azure: the text those results cover


class ChatChunk(msgspec.Struct):
    id: str
    created: Int64
    model: str
    choices: list[ChunkChoice]
    object: str = "chat.completion.chunk"
    usage: Usage | None | UnsetType = UNSET
    system_fingerprint: str | None | UnsetType = UNSET
    prompt_filter_results: list[dict[str, Any]] | UnsetType = UNSET  # Azure, as on ChatCompletion


# ---------------------------------------------------------------- models


class ModelCard(msgspec.Struct):
    id: str
    created: Int64
    owned_by: str
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


# Built once: msgspec's encoders and decoders are cheapest reused (docs/perf-tips.rst).
json_encoder = msgspec.json.Encoder()
chat_request_decoder = msgspec.json.Decoder(ChatRequest)

__all__ = ['ChatChunk', 'ChatCompletion', 'ChatRequest', 'Choice', 'ChunkChoice', 'ContentPart', 'Delta', 'DeltaFunction', 'DeltaToolCall', 'FilePart', 'FunctionCall', 'FunctionDef', 'ImageUrl', 'ImageUrlPart', 'InputAudioPart', 'Message', 'ModelCard', 'ModelList', 'Penalty', 'PositiveInt', 'RefusalPart', 'ResponseMessage', 'Role', 'StreamOptions', 'Temperature', 'TextPart', 'Tool', 'ToolCall', 'Usage', 'chat_request_decoder', 'json_encoder']
