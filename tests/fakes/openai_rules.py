"""The fake OpenAI's request rules and what it answers (https://platform.openai.com/docs/api-reference/chat).

Rules: the checks api.openai.com makes that are cheap to copy, each a 400
`invalid_request_error` worded and `param`-ed like the real one, so a request
the fake accepts (a follow-up turn carrying tool results, an image part, JSON
mode) is one OpenAI would accept too.

Answers, picked from the request so that each scenario is one request away:

    tool_choice {"function": {"name": f}}     one call to f, arguments TOOL_ARGUMENTS
    tools, tool_choice auto/required, and     two parallel calls to the first tool, for Paris and
      the last user turn says "two cities"      Tokyo (one if parallel_tool_calls is false)
    tool_choice "required"                    one call to the first tool, arguments TOOL_ARGUMENTS
    response_format json_object               {"answer": "<the words>"}
    response_format json_schema               an object with every required property filled in
    otherwise (and after tool results)        the words "tok0 tok1 ...", cut by max_(completion_)tokens
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import msgspec

from tests.fakes.openai_wire import ChatRequest, InMessage, NamedToolChoice, ToolDef

TOOL_ARGUMENTS = '{"arg": "value"}'
PARALLEL_CITIES = ("Paris", "Tokyo")
IMAGE_PROMPT_TOKENS = 85  # what OpenAI bills a low-detail image
_PIECE = re.compile(r"\w+|\W+")
_DATA_URL = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]+$")


class Invalid(Exception):
    """One broken rule: OpenAI's 400 message and `param`."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class Call(msgspec.Struct):
    id: str
    name: str
    arguments: str


class Answer(msgspec.Struct):
    pieces: list[str]  # content, as streamed (empty when the answer is tool calls)
    calls: list[Call]
    finish_reason: str

    def completion_tokens(self) -> int:
        return len(self.pieces) + sum(len(pieces(c.arguments)) for c in self.calls)


def pieces(text: str) -> list[str]:
    """Cut text the way a tokenizer roughly would: '{"arg": "value"}' → '{"', 'arg', '": "', 'value', '"}'."""
    return _PIECE.findall(text)


# ---------------------------------------------------------------- rules


def validate(req: ChatRequest) -> None:
    _check_tools(req)
    _check_messages(req.messages)
    _check_response_format(req)


def _check_tools(req: ChatRequest) -> None:
    for name in ("tool_choice", "parallel_tool_calls"):
        if getattr(req, name) is not None and not req.tools:
            raise Invalid(f"Invalid value for '{name}': '{name}' is only allowed when 'tools' are specified.",
                          name)
    if isinstance(req.tool_choice, NamedToolChoice) and req.tools:
        wanted = req.tool_choice.function.name
        if wanted not in {t.function.name for t in req.tools}:
            raise Invalid(f"Invalid value for 'tool_choice': function '{wanted}' not found in 'tools'.",
                          "tool_choice")


def _check_messages(messages: list[InMessage]) -> None:
    pending: dict[str, int] = {}  # tool_call_id → index of the assistant message awaiting its result
    for i, m in enumerate(messages):
        if m.role == "tool":
            if not pending:  # sic: OpenAI's spelling
                raise Invalid("Invalid parameter: messages with role 'tool' must be a response to a "
                              "preceeding message with 'tool_calls'.", f"messages.[{i}].role")
            if m.tool_call_id not in pending:
                raise Invalid(f"Invalid parameter: 'tool_call_id' of '{m.tool_call_id}' not found in "
                              "'tool_calls' of previous message.", f"messages.[{i}].tool_call_id")
            del pending[m.tool_call_id]
            continue
        _check_answered(pending)
        if m.role == "assistant" and m.tool_calls:
            pending = {call.id: i for call in m.tool_calls}
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                _check_part(m.role, part, f"messages.[{i}].content.[{j}]")
    _check_answered(pending)


def _check_answered(pending: dict[str, int]) -> None:
    if pending:
        raise Invalid("An assistant message with 'tool_calls' must be followed by tool messages responding to "
                      "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                      + ", ".join(pending), f"messages.[{next(iter(pending.values()))}].role")


def _check_part(role: str, part: dict[str, Any], param: str) -> None:
    kind = part.get("type")
    if kind != "image_url":
        return
    if role != "user":
        raise Invalid(f"Image URLs are only allowed for messages with role 'user', but this message with role "
                      f"'{role}' contains an image URL.", f"{param}.type")
    url = str((part.get("image_url") or {}).get("url", ""))
    if url.startswith("data:"):
        if not _DATA_URL.match(url):
            raise Invalid(f"Invalid '{param}.image_url.url'. Expected a base64-encoded data URL with an image MIME "
                          "type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU=').",
                          f"{param}.image_url.url", "invalid_value")
    elif not url.startswith(("https://", "http://")):
        raise Invalid(f"Invalid '{param}.image_url.url'. Expected a valid URL.",
                      f"{param}.image_url.url", "invalid_value")


def _check_response_format(req: ChatRequest) -> None:
    fmt = req.response_format
    if fmt is None:
        return
    if fmt.type not in ("text", "json_object", "json_schema"):
        raise Invalid(f"Invalid value: '{fmt.type}'. Supported values are: 'json_object', 'json_schema', and "
                      "'text'.", "response_format.type", "invalid_value")
    if fmt.type == "json_schema" and fmt.json_schema is None:
        raise Invalid("Missing required parameter: 'response_format.json_schema'.",
                      "response_format.json_schema", "missing_required_parameter")
    if fmt.type == "json_object" and not any("json" in _text(m).lower() for m in req.messages):
        raise Invalid("'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                      "'json_object'.", "messages")


# ---------------------------------------------------------------- answers


def _text(m: InMessage) -> str:
    if isinstance(m.content, str):
        return m.content
    return " ".join(str(p.get("text", "")) for p in m.content or [] if p.get("type") == "text")


def prompt_tokens(req: ChatRequest) -> int:
    images = sum(1 for m in req.messages if isinstance(m.content, list)
                 for p in m.content if p.get("type") == "image_url")
    return sum(len(_text(m).split()) for m in req.messages) + IMAGE_PROMPT_TOKENS * images


def fill(schema: Any, name: str = "value") -> Any:
    """A value valid for a (simple) JSON Schema: required properties only, first enum member, first branch."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for branch in ("anyOf", "oneOf", "allOf"):
        if schema.get(branch):
            return fill(schema[branch][0], name)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    properties = schema.get("properties") or {}
    match kind:
        case "object":
            return {key: fill(properties.get(key, {}), key) for key in schema.get("required", list(properties))}
        case "array":
            return [fill(schema.get("items", {}), name)]
        case "integer":
            return 1
        case "number":
            return 1.5
        case "boolean":
            return True
        case "null":
            return None
    return name


def _city_arguments(tool: ToolDef, city: str) -> str:
    schema = tool.function.parameters or {}
    arguments = fill(schema) if schema.get("properties") else {}
    properties = schema.get("properties") or {}
    strings = [k for k in [*schema.get("required", []), *properties] if properties.get(k, {}).get("type") == "string"]
    arguments[strings[0] if strings else "city"] = city
    return json.dumps(arguments)


def _calls(req: ChatRequest, new_id: Callable[[str], str]) -> list[Call]:
    if not req.tools or req.tool_choice == "none" or (req.messages and req.messages[-1].role == "tool"):
        return []
    if isinstance(req.tool_choice, NamedToolChoice):
        return [Call(new_id("call_"), req.tool_choice.function.name, TOOL_ARGUMENTS)]
    last_user = next((m for m in reversed(req.messages) if m.role == "user"), None)
    first = req.tools[0]
    if last_user is not None and "two cities" in _text(last_user).lower():
        cities = PARALLEL_CITIES if req.parallel_tool_calls is not False else PARALLEL_CITIES[:1]
        return [Call(new_id("call_"), first.function.name, _city_arguments(first, c)) for c in cities]
    if req.tool_choice == "required":
        return [Call(new_id("call_"), first.function.name, TOOL_ARGUMENTS)]
    return []


def answer(req: ChatRequest, chunks: int, new_id: Callable[[str], str]) -> Answer:
    if calls := _calls(req, new_id):
        return Answer([], calls, "tool_calls")
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    n = chunks if limit is None else max(0, min(chunks, limit))
    words = [f"tok{i}" if i == 0 else f" tok{i}" for i in range(n)]
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return Answer(words, [], "length" if n < chunks else "stop")
    if fmt.type == "json_schema" and fmt.json_schema is not None:
        document = fill(fmt.json_schema.schema or {"type": "object"})
    else:
        document = {"answer": "".join(f"tok{i}" if i == 0 else f" tok{i}" for i in range(chunks))}
    content = pieces(json.dumps(document))
    cut = limit is not None and limit < len(content)
    return Answer(content[:limit] if cut else content, [], "length" if cut else "stop")
