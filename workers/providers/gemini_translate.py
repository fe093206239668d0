"""OpenAI Chat Completions → Gemini generateContent, and back: pure functions, no I/O.

Choices the protocols leave to us (neither https://platform.openai.com/docs/api-reference/chat/create
nor https://ai.google.dev/api/generate-content says how to map the other):
- Gemini wants alternating turns, so consecutive messages of one role are
  merged into one Content; tool results become `functionResponse` parts of a
  user turn, named after the assistant tool call they answer.
- Tool schemas and `json_schema` formats go out as `parametersJsonSchema` /
  `responseJsonSchema`, which take JSON Schema as is; the older `parameters` /
  `responseSchema` take an OpenAPI subset that rejects keys such as
  `additionalProperties`, which strict OpenAI schemas always carry.
- The Developer API rarely fills `functionCall.id`, so tool call ids are
  minted per response: `call_<responseId>_<n>`. Thinking models (Gemini 3)
  reject a replayed function call without its `thoughtSignature`, and an
  OpenAI client keeps nothing but the id, so the signature rides in the id
  after `__ts__` and is put back on the way in. No state on our side.
"""

from __future__ import annotations

import binascii
import json
import mimetypes
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from broker.errors import InvalidRequest, UpstreamError
from broker.wire import (
    ChatCompletion,
    ChatRequest,
    Choice,
    FilePart,
    ImageUrlPart,
    InputAudioPart,
    Message,
    RefusalPart,
    ResponseMessage,
    TextPart,
    ToolCall,
    Usage,
)
from broker.wire import FunctionCall as OpenAIFunctionCall
from broker.wire.reasoning import budget_for
from workers.providers import gemini_wire as g

SIGNATURE_MARK = "__ts__"
_CONTENT_FILTER = {
    "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
    "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION",
}
_TOOL_CHOICE = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

# ---------------------------------------------------------------- request


def to_upstream(req: ChatRequest) -> bytes:
    system, contents = _contents(req.messages)
    if not contents:
        raise InvalidRequest("Gemini needs at least one user or assistant message", param="messages")
    body = g.GenerateContentRequest(
        contents=contents,
        system_instruction=g.Content(parts=system) if system else UNSET,
        tools=_tools(req),
        tool_config=_tool_config(req) if req.tools else UNSET,
        generation_config=_generation_config(req),
    )
    return g.encoder.encode(body)


def _contents(messages: list[Message]) -> tuple[list[g.Part], list[g.Content]]:
    system: list[g.Part] = []
    contents: list[g.Content] = []
    call_names: dict[str, str] = {}  # tool_call id → function name, latest assistant turn wins
    for i, m in enumerate(messages):
        path = f"messages[{i}]"
        if m.role in ("system", "developer"):
            system.append(g.Part(text=m.text()))
        elif m.role == "user":
            _append(contents, "user", _user_parts(m, path))
        elif m.role == "assistant":
            _append(contents, "model", _assistant_parts(m, path, call_names))
        else:  # tool, or the legacy `function` role
            _append(contents, "user", [_tool_result(m, path, call_names)])
    return system, contents


def _append(contents: list[g.Content], role: str, parts: list[g.Part]) -> None:
    if not parts:
        return
    if contents and contents[-1].role == role:
        contents[-1].parts.extend(parts)
    else:
        contents.append(g.Content(role=role, parts=parts))


def _user_parts(m: Message, path: str) -> list[g.Part]:
    if not isinstance(m.content, list):
        return [g.Part(text=m.content or "")]
    parts = []
    for j, p in enumerate(m.content):
        where = f"{path}.content[{j}]"
        if isinstance(p, TextPart):
            parts.append(g.Part(text=p.text))
        elif isinstance(p, RefusalPart):
            parts.append(g.Part(text=p.refusal))
        elif isinstance(p, ImageUrlPart):
            parts.append(_media(p.image_url.url, f"{where}.image_url.url", image=True))
        elif isinstance(p, InputAudioPart):
            parts.append(g.Part(inline_data=g.Blob(
                mime_type=f"audio/{p.input_audio.get('format', 'wav')}", data=str(p.input_audio.get("data", "")))))
        elif isinstance(p, FilePart) and isinstance(p.file.get("file_data"), str):
            parts.append(_media(p.file["file_data"], f"{where}.file.file_data", image=False))
        else:
            raise InvalidRequest("Gemini takes files only inline (`file_data` as a data: URL)", param=where)
    return parts


def _media(url: str, param: str, *, image: bool) -> g.Part:
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        mime, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or not mime:
            raise InvalidRequest("data URLs must look like data:<mime type>;base64,<data>", param=param)
        try:
            binascii.a2b_base64(data)
        except binascii.Error:
            raise InvalidRequest("the data URL is not valid base64", param=param) from None
        return g.Part(inline_data=g.Blob(mime_type=mime, data=data))
    if url.lower().startswith(("https://", "gs://")):
        # Gemini fetches public and signed https URLs (and GCS / Files-API URIs) itself, but needs
        # their type (https://ai.google.dev/gemini-api/docs/file-input-methods): from the path's
        # extension, else, for an image_url, JPEG.
        return g.Part(file_data=g.FileData(file_uri=url, mime_type=_url_mime_type(url, image=image)))
    scheme = url.split(":", 1)[0] if ":" in url else "relative"
    raise InvalidRequest(f"Gemini cannot fetch {scheme} URLs: send an https:// URL or a data: URL", param=param)


# Gemini's image types (PNG, JPEG, WEBP, HEIC, HEIF), spelled out: mimetypes' table depends on the host.
_IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
                "heic": "image/heic", "heif": "image/heif", "gif": "image/gif"}


def _url_mime_type(url: str, *, image: bool) -> str | UnsetType:
    name = url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    if extension in _IMAGE_TYPES:
        return _IMAGE_TYPES[extension]
    if image:
        # An image_url is an image by OpenAI's contract; learning its real type would mean fetching
        # client-given URLs from inside the deployment. JPEG is what extensionless photo URLs
        # (CDNs, thumbnails) mostly serve.
        return "image/jpeg"
    return mimetypes.guess_type(name)[0] or UNSET


def _assistant_parts(m: Message, path: str, call_names: dict[str, str]) -> list[g.Part]:
    text = m.text()
    parts = [g.Part(text=text)] if text else []
    calls = m.tool_calls if isinstance(m.tool_calls, list) else []
    for k, call in enumerate(calls):
        args = _arguments(call.function.arguments, f"{path}.tool_calls[{k}].function.arguments")
        _, _, signature = call.id.partition(SIGNATURE_MARK)
        parts.append(g.Part(function_call=g.FunctionCall(name=call.function.name, args=args),
                            thought_signature=signature or UNSET))
        call_names[call.id] = call.function.name
    if isinstance(m.function_call, OpenAIFunctionCall):  # the legacy single-call field
        args = _arguments(m.function_call.arguments, f"{path}.function_call.arguments")
        parts.append(g.Part(function_call=g.FunctionCall(name=m.function_call.name, args=args)))
    return parts


def _arguments(arguments: str, param: str) -> dict[str, Any]:
    try:
        args = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise InvalidRequest("Gemini needs tool call arguments that are a JSON object", param=param)
    return args


def _tool_result(m: Message, path: str, call_names: dict[str, str]) -> g.Part:
    if m.role == "function":
        name = m.name if isinstance(m.name, str) else ""
    else:
        name = call_names.get(str(m.tool_call_id), "")
    if not name:
        raise InvalidRequest("no earlier assistant tool call has this id", param=f"{path}.tool_call_id")
    text = m.text()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    # `response` must be an object; the proto suggests "output"/"result" keys for anything else.
    response = parsed if isinstance(parsed, dict) else {"result": text}
    return g.Part(function_response=g.FunctionResponse(name=name, response=response))


def _tools(req: ChatRequest) -> list[g.Tool] | UnsetType:
    if not req.tools:
        return UNSET
    return [g.Tool(function_declarations=[
        g.FunctionDeclaration(name=t.function.name, description=t.function.description,
                              parameters_json_schema=t.function.parameters)
        for t in req.tools
    ])]


def _tool_config(req: ChatRequest) -> g.ToolConfig | UnsetType:
    choice = req.tool_choice
    if isinstance(choice, str) and choice in _TOOL_CHOICE:
        return g.ToolConfig(function_calling_config=g.FunctionCallingConfig(mode=_TOOL_CHOICE[choice]))
    if isinstance(choice, dict) and isinstance(name := (choice.get("function") or {}).get("name"), str):
        return g.ToolConfig(function_calling_config=g.FunctionCallingConfig(mode="ANY", allowed_function_names=[name]))
    return UNSET


def _generation_config(req: ChatRequest) -> g.GenerationConfig | UnsetType:
    def given(value: Any) -> Any:
        return UNSET if value is None else value

    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    config = g.GenerationConfig(
        candidate_count=given(req.n), stop_sequences=given(stop), max_output_tokens=given(req.output_limit()),
        temperature=given(req.temperature), top_p=given(req.top_p), top_k=given(req.top_k), seed=given(req.seed),
        presence_penalty=given(req.presence_penalty), frequency_penalty=given(req.frequency_penalty),
    )
    budget = budget_for(req.reasoning_effort)  # reasoning_effort → thinkingBudget (broker/wire/reasoning.py)
    if budget is not None:
        config.thinking_config = g.ThinkingConfig(thinking_budget=budget)
    fmt = req.response_format if isinstance(req.response_format, dict) else {}
    if fmt.get("type") in ("json_object", "json_schema"):
        config.response_mime_type = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        config.response_json_schema = schema if isinstance(schema, dict) else UNSET
    return config if msgspec.json.encode(config) != b"{}" else UNSET


# ---------------------------------------------------------------- response


def decode_response(data: bytes) -> g.GenerateContentResponse:
    try:
        return g.response_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"Gemini sent an invalid response: {exc}", retryable=True) from None


def from_upstream(data: bytes, *, model: str) -> ChatCompletion:
    resp = decode_response(data)
    if resp.candidates:
        choices = [_choice(c, pos, resp.response_id) for pos, c in enumerate(resp.candidates)]
    elif resp.prompt_feedback is not None and resp.prompt_feedback.block_reason:
        # The prompt itself was blocked: a 200 the client can recognise, as OpenAI's own filter does.
        choices = [Choice(0, ResponseMessage(""), "content_filter")]
    else:
        raise UpstreamError("Gemini returned no candidates and no reason", retryable=True)
    return ChatCompletion("", 0, model, choices, usage(resp.usage_metadata))


def _choice(candidate: g.Candidate, position: int, response_id: str) -> Choice:
    parts = candidate.content.parts if candidate.content else []
    text = "".join(p.text for p in parts if p.text is not None and not p.thought)
    calls = tool_calls(parts, response_id, first=0)
    message = ResponseMessage(text if text or not calls else None, tool_calls=calls or UNSET)
    index = candidate.index if candidate.index is not None else position
    return Choice(index, message, finish_reason(candidate.finish_reason, bool(calls)))


def tool_calls(parts: list[g.RespPart], response_id: str, *, first: int) -> list[ToolCall]:
    """The function calls among `parts`, numbered from `first` (stream fragments continue the count)."""
    calls: list[ToolCall] = []
    for p in parts:
        if p.function_call is not None:
            arguments = json.dumps(p.function_call.args, ensure_ascii=False)
            calls.append(ToolCall(call_id(response_id, first + len(calls), p.thought_signature),
                                  OpenAIFunctionCall(p.function_call.name, arguments)))
    return calls


def call_id(response_id: str, n: int, signature: str | None) -> str:
    base = f"call_{response_id}_{n}" if response_id else f"call_{n}"
    if not signature:
        return base
    # URL-safe and unpadded, so the id stays [A-Za-z0-9_-]; proto3 JSON accepts it back as bytes.
    return base + SIGNATURE_MARK + signature.replace("+", "-").replace("/", "_").rstrip("=")


def finish_reason(reason: str | None, has_calls: bool) -> str:
    if reason in _CONTENT_FILTER:
        return "content_filter"
    if reason == "MAX_TOKENS":
        return "length"
    # A function call finishes with STOP. Others (MALFORMED_FUNCTION_CALL, OTHER, ...) have no OpenAI twin.
    return "tool_calls" if has_calls else "stop"


def usage(meta: g.UsageMetadata | None) -> Usage | None:
    if meta is None:
        return None
    prompt = meta.prompt_token_count + meta.tool_use_prompt_token_count
    completion = meta.candidates_token_count + meta.thoughts_token_count
    return Usage(
        prompt, completion, prompt + completion,
        prompt_tokens_details={"cached_tokens": meta.cached_content_token_count},
        completion_tokens_details={"reasoning_tokens": meta.thoughts_token_count},
    )
