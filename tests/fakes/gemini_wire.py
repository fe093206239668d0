"""Gemini v1beta request Structs and conversation rules for the fake upstream (https://ai.google.dev/api/generate-content).

Written from the protos (google/ai/generativelanguage/v1beta/{content,generative_service}.proto),
not from the adapter's Structs. Strict on purpose: the real API answers an unknown field with
400 INVALID_ARGUMENT ("Invalid JSON payload received. Unknown name ..."), and `validate` checks
the rules it enforces on a conversation. Anything they reject, the fake rejects.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import msgspec


class _Strict(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True):
    pass


class Blob(_Strict):
    mime_type: str
    data: str


FILES_API = "https://generativelanguage.googleapis.com/v1beta/files/"


class FileData(_Strict):
    file_uri: str
    mime_type: str = ""


class FunctionCall(_Strict):
    name: str
    args: dict[str, Any] = {}
    id: str = ""


class FunctionResponse(_Strict):
    name: str
    response: dict[str, Any]
    id: str = ""


class Part(_Strict):
    text: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None
    thought: bool = False
    thought_signature: str | None = None

    def data_fields(self) -> int:
        return sum(x is not None for x in (self.text, self.inline_data, self.file_data,
                                           self.function_call, self.function_response))


class Content(_Strict):
    parts: list[Part] = []
    role: str = ""


class FunctionDeclaration(_Strict):
    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    parameters_json_schema: Any = None
    response: dict[str, Any] | None = None


class Tool(_Strict):
    function_declarations: list[FunctionDeclaration] = []
    code_execution: dict[str, Any] | None = None
    google_search: dict[str, Any] | None = None


class FunctionCallingConfig(_Strict):
    mode: str = "AUTO"
    allowed_function_names: list[str] = []


class ToolConfig(_Strict):
    function_calling_config: FunctionCallingConfig = msgspec.field(default_factory=FunctionCallingConfig)


class GenerationConfig(_Strict):
    candidate_count: int = 1
    stop_sequences: list[str] = []
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_mime_type: str = "text/plain"
    response_schema: dict[str, Any] | None = None
    response_json_schema: Any = None
    response_logprobs: bool | None = None
    logprobs: int | None = None
    thinking_config: dict[str, Any] | None = None


class SafetySetting(_Strict):
    category: str
    threshold: str


class GenerateContentRequest(_Strict):
    contents: list[Content] = []
    system_instruction: Content | None = None
    tools: list[Tool] = []
    tool_config: ToolConfig = msgspec.field(default_factory=ToolConfig)
    safety_settings: list[SafetySetting] = []
    generation_config: GenerationConfig = msgspec.field(default_factory=GenerationConfig)
    cached_content: str | None = None


class EmbedContentRequest(_Strict):
    model: str
    content: Content
    task_type: str | None = None
    title: str | None = None
    output_dimensionality: int | None = None


class BatchEmbedContentsRequest(_Strict):
    requests: list[EmbedContentRequest] = []


# ---- validation: the rules the real API enforces on a conversation ----

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")


def validate(req: GenerateContentRequest) -> str | None:
    if not req.contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(req.contents):
        if content.role not in ("user", "model") and not (content.role == "" and len(req.contents) == 1):
            return f"* GenerateContentRequest.contents[{i}].role: Please use a valid role: user, model."
        if not content.parts:
            return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
        for j, part in enumerate(content.parts):
            if part.data_fields() != 1:
                return f"* GenerateContentRequest.contents[{i}].parts[{j}].data: required oneof field 'data' must have one initialized field"
            if part.inline_data is not None and (problem := _blob_problem(part.inline_data)):
                return f"* GenerateContentRequest.contents[{i}].parts[{j}].inline_data: {problem}"
            if part.file_data is not None and (problem := _file_problem(part.file_data)):
                return f"* GenerateContentRequest.contents[{i}].parts[{j}].file_data: {problem}"
            if part.function_call is not None and content.role != "model":
                return "Please ensure that function call turns come from the model."
        if i and content.role == req.contents[i - 1].role:
            return "Please ensure that multiturn requests alternate between user and model."
        if problem := _function_turn_problem(req.contents, i):
            return problem
    if req.system_instruction is not None and any(p.text is None for p in req.system_instruction.parts):
        return "* GenerateContentRequest.system_instruction: system instructions must be text only."
    return _tools_problem(req) or _config_problem(req.generation_config)


def _blob_problem(blob: Blob) -> str | None:
    if not blob.mime_type:
        return "mime_type is required"
    try:
        base64.b64decode(blob.data, validate=True)
    except binascii.Error:
        return "Invalid value (bytes): not base64"
    return None


def _file_problem(file: FileData) -> str | None:
    """`fileUri` is a Files-API URI (whose upload recorded its type) or a public https URL, which
    Gemini fetches itself and which needs `mimeType` (`fileData{mimeType, fileUri}`):
    https://ai.google.dev/gemini-api/docs/file-input-methods."""
    if file.file_uri.startswith((FILES_API, "gs://")):
        return None
    if not file.file_uri.startswith("https://"):
        return f"Unsupported file uri: {file.file_uri}"
    if not file.mime_type:
        return "mime_type is required for a file_uri that is not a Files API file"
    return None


def _function_turn_problem(contents: list[Content], i: int) -> str | None:
    responses = [p.function_response.name for p in contents[i].parts if p.function_response is not None]
    previous_calls = [p.function_call.name for p in contents[i - 1].parts if p.function_call is not None] if i else []
    if responses and not previous_calls:
        return "Please ensure that function response turn comes immediately after a function call turn."
    if previous_calls and sorted(responses) != sorted(previous_calls):
        return ("Please ensure that the number of function response parts is equal to the number of "
                "function call parts of the function call turn.")
    return None


def _tools_problem(req: GenerateContentRequest) -> str | None:
    names = [d.name for t in req.tools for d in t.function_declarations]
    for d in (d for t in req.tools for d in t.function_declarations):
        if not _NAME.match(d.name):
            return f"* GenerateContentRequest.tools[0].function_declarations: Invalid function name {d.name!r}."
        if d.parameters is not None and d.parameters_json_schema is not None:
            return "* parameters and parameters_json_schema are mutually exclusive."
    fcc = req.tool_config.function_calling_config
    if fcc.mode not in ("AUTO", "ANY", "NONE", "VALIDATED"):
        return f"Invalid value at 'tool_config.function_calling_config.mode' ({fcc.mode!r})"
    if fcc.allowed_function_names and (fcc.mode != "ANY" or not set(fcc.allowed_function_names) <= set(names)):
        return "* allowed_function_names may be set only with mode ANY, naming declared functions."
    return None


def _config_problem(config: GenerationConfig) -> str | None:
    if len(config.stop_sequences) > 5:
        return "* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences."
    if config.response_schema is not None and config.response_json_schema is not None:
        return "* response_schema and response_json_schema are mutually exclusive."
    schema_given = config.response_schema is not None or config.response_json_schema is not None
    if schema_given and config.response_mime_type != "application/json":
        return "* GenerateContentRequest.generation_config.response_mime_type: must be application/json with a schema."
    if config.temperature is not None and not 0 <= config.temperature <= 2:
        return "* GenerateContentRequest.generation_config.temperature: must be in [0.0, 2.0]."
    if not 1 <= config.candidate_count <= 8:
        return "* GenerateContentRequest.generation_config.candidate_count: must be in [1, 8]."
    return None
