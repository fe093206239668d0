"""Gemini Developer API (v1beta) payloads as msgspec Structs (https://ai.google.dev/api/generate-content).

Requests are written in lowerCamelCase, the proto3 JSON names. Responses
declare only the fields the translation reads; the API returns many more
(safetyRatings, citationMetadata, groundingMetadata, ...), which msgspec skips
without building objects. Field semantics: googleapis
google/ai/generativelanguage/v1beta/{content,generative_service}.proto.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType


class _Out(msgspec.Struct, omit_defaults=True, rename="camel", kw_only=True):
    """Request side: UNSET fields are left out, so we never send a value the client did not ask for."""


class Blob(_Out):
    mime_type: str
    data: str  # base64


class FileData(_Out):
    file_uri: str
    mime_type: str | UnsetType = UNSET


class FunctionCall(_Out):
    name: str
    args: dict[str, Any] = {}


class FunctionResponse(_Out):
    name: str
    response: dict[str, Any]  # required and must be an object (google.protobuf.Struct)


class Part(_Out):
    """A oneof in the proto: exactly one data field is set (plus an optional signature)."""

    text: str | UnsetType = UNSET
    inline_data: Blob | UnsetType = UNSET
    file_data: FileData | UnsetType = UNSET
    function_call: FunctionCall | UnsetType = UNSET
    function_response: FunctionResponse | UnsetType = UNSET
    # Bytes as base64; proto3 JSON accepts standard or URL-safe, padded or not.
    thought_signature: str | UnsetType = UNSET


class Content(_Out):
    parts: list[Part]
    role: str | UnsetType = UNSET


class FunctionDeclaration(_Out):
    name: str
    description: str | UnsetType = UNSET
    parameters_json_schema: dict[str, Any] | UnsetType = UNSET  # JSON Schema as the client sent it


class Tool(_Out):
    function_declarations: list[FunctionDeclaration]


class FunctionCallingConfig(_Out):
    mode: str  # AUTO | ANY | NONE
    allowed_function_names: list[str] | UnsetType = UNSET


class ToolConfig(_Out):
    function_calling_config: FunctionCallingConfig


class ThinkingConfig(_Out):
    thinking_budget: int  # tokens; 0 turns thinking off on the models that allow it


class GenerationConfig(_Out):
    candidate_count: int | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    max_output_tokens: int | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    top_k: int | UnsetType = UNSET
    seed: int | UnsetType = UNSET
    presence_penalty: float | UnsetType = UNSET
    frequency_penalty: float | UnsetType = UNSET
    response_mime_type: str | UnsetType = UNSET
    response_json_schema: dict[str, Any] | UnsetType = UNSET  # JSON Schema, so no OpenAPI-subset rewrite
    thinking_config: ThinkingConfig | UnsetType = UNSET


class GenerateContentRequest(_Out):
    contents: list[Content]
    system_instruction: Content | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_config: ToolConfig | UnsetType = UNSET
    generation_config: GenerationConfig | UnsetType = UNSET


class EmbedContentRequest(_Out):
    model: str  # "models/<id>": must equal the model in the URL
    content: Content
    output_dimensionality: int | UnsetType = UNSET


class BatchEmbedContentsRequest(_Out):
    requests: list[EmbedContentRequest]


# ---------------------------------------------------------------- responses (decode only)


class _In(msgspec.Struct, rename="camel", kw_only=True):
    pass


class RespFunctionCall(_In):
    name: str
    args: dict[str, Any] = {}


class RespPart(_In):
    text: str | None = None
    thought: bool = False
    function_call: RespFunctionCall | None = None
    thought_signature: str | None = None


class RespContent(_In):
    parts: list[RespPart] = []


class Candidate(_In):
    content: RespContent | None = None  # absent when the candidate was blocked
    finish_reason: str | None = None
    index: int | None = None  # proto3 JSON may omit 0


class PromptFeedback(_In):
    block_reason: str | None = None


class UsageMetadata(_In):
    prompt_token_count: int = 0  # includes cached tokens
    cached_content_token_count: int = 0
    candidates_token_count: int = 0  # excludes thoughts (recorded traffic: total = prompt + candidates + thoughts)
    thoughts_token_count: int = 0
    tool_use_prompt_token_count: int = 0


class ErrorDetail(_In):
    type: str = msgspec.field(default="", name="@type")
    reason: str | None = None  # google.rpc.ErrorInfo
    retry_delay: str | None = None  # google.rpc.RetryInfo, a Duration such as "26s"


class GoogleError(_In):
    code: int = 0
    message: str = ""
    status: str = ""
    details: list[ErrorDetail] = []


class GenerateContentResponse(_In):
    candidates: list[Candidate] = []
    prompt_feedback: PromptFeedback | None = None
    usage_metadata: UsageMetadata | None = None
    response_id: str = ""
    error: GoogleError | None = None  # a failure after the 200, inside the stream


class ErrorEnvelope(_In):
    error: GoogleError | None = None


class ContentEmbedding(_In):
    values: list[float]


class BatchEmbedContentsResponse(_In):
    embeddings: list[ContentEmbedding] = []


encoder = msgspec.json.Encoder()
response_decoder = msgspec.json.Decoder(GenerateContentResponse)
error_decoder = msgspec.json.Decoder(ErrorEnvelope)
embed_response_decoder = msgspec.json.Decoder(BatchEmbedContentsResponse)
