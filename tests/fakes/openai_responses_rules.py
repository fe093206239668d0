"""What the fake Responses upstream refuses, worded and `param`-ed as api.openai.com does, and
what it remembers between requests so that it can.

The broker relays a /v1/responses request to such an upstream nearly untouched; the bugs a relay
can have are exactly what OpenAI refuses: its own `resp_…` ids forwarded as
`previous_response_id`, reasoning items replayed without the blob that vouches for them or cut
off from the call they came with, a tool result whose call went missing, Chat's nested tool
shape, `background` sent up. Sources: PROTOCOLS.md §10; the wording of the reasoning errors is
OpenAI's as reported in continuedev/continue#8933 and openai/codex#8126.
"""

from __future__ import annotations

import collections
from typing import Any

import msgspec

from tests.fakes.openai_responses_seal import opened

KNOWN_ITEMS = ("message", "function_call", "function_call_output", "reasoning", "item_reference",
               "web_search_call", "custom_tool_call", "custom_tool_call_output", "file_search_call")
MIN_OUTPUT_TOKENS = 16  # OpenAI/Azure: "Expected a value >= 16" (integer_below_min_value; vectorize-io/hindsight#58)
_MAX_STORED = 10_000  # responses kept; a test run needs a handful, a benchmark must not grow forever


class Refused(Exception):
    """One broken rule: OpenAI's status, message, `param` and `code`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class ResponsesRequest(msgspec.Struct):
    """The fields the fake reads; lenient, as OpenAI ignores what it does not know yet. Nulls are
    accepted where SDKs send them for "not set"."""

    model: str
    input: str | list[dict[str, Any]] = []
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    previous_response_id: str | None = None
    store: bool | None = None  # None: OpenAI's default, true
    background: bool | None = None
    stream: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    text: dict[str, Any] | None = None
    truncation: str | None = None


class Store:
    """Stored responses (the whole conversation through each, so a `previous_response_id` chain is
    one lookup), the ids of their items, and which reasoning item each emitted call came with."""

    def __init__(self) -> None:
        self.conversations: collections.OrderedDict[str, list[dict[str, Any]]] = collections.OrderedDict()
        self.items: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        # Kept for store:false responses too: OpenAI knows an fc_ id's reasoning from the id itself.
        self.reasoning_of: collections.OrderedDict[str, str] = collections.OrderedDict()

    def keep(self, response_id: str, conversation: list[dict[str, Any]], output: list[dict[str, Any]],
             stored: bool) -> None:
        reasoning = next((item["id"] for item in output if item["type"] == "reasoning"), None)
        for item in output:
            if reasoning and item["type"] == "function_call":
                _bounded(self.reasoning_of)[item["id"]] = reasoning
        if not stored:
            return
        _bounded(self.conversations)[response_id] = [*conversation, *output]
        for item in (*conversation, *output):
            if isinstance(item.get("id"), str):
                _bounded(self.items)[item["id"]] = item


def _bounded(table: collections.OrderedDict[str, Any]) -> collections.OrderedDict[str, Any]:
    while len(table) >= _MAX_STORED:
        table.popitem(last=False)
    return table


def decode(body: Any) -> ResponsesRequest:
    if not isinstance(body, dict):
        raise Refused(400, "We could not parse the JSON body of your request.")
    if not body.get("model"):
        raise Refused(400, "Missing required parameter: 'model'.", "model", "missing_required_parameter")
    try:
        return msgspec.convert(body, ResponsesRequest)
    except msgspec.ValidationError as e:
        # msgspec ends with "- at `$.tools[0]`"; that path is OpenAI's param.
        message, sep, path = str(e).rpartition(" - at `$.")
        param = path.rstrip("`") if sep else None
        raise Refused(400, f"Invalid type for '{param}': {message}.", param, "invalid_type") from None


def validate(req: ResponsesRequest, store: Store) -> list[dict[str, Any]]:
    """Refuse what OpenAI refuses; the conversation the answer continues (chain + input) otherwise."""
    if req.background:
        raise Refused(400, "This fake runs no background responses: a gateway runs `background` itself "
                      "and never sends it upstream.", "background")
    if req.max_output_tokens is not None and req.max_output_tokens < MIN_OUTPUT_TOKENS:
        raise Refused(400, "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                      f"{MIN_OUTPUT_TOKENS}, but got {req.max_output_tokens} instead.", "max_output_tokens",
                      "integer_below_min_value")
    _check_tools(req.tools or [])
    chain: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        if req.previous_response_id not in store.conversations:
            raise Refused(400, f"Previous response with id '{req.previous_response_id}' not found.",
                          "previous_response_id", "previous_response_not_found")
        chain = store.conversations[req.previous_response_id]
    items = [{"type": "message", "role": "user", "content": req.input}] if isinstance(req.input, str) else req.input
    return [*chain, *_checked_items(items, chain, store)]


def _check_tools(tools: list[dict[str, Any]]) -> None:
    for i, tool in enumerate(tools):
        if not isinstance(tool.get("type"), str):
            raise Refused(400, f"Missing required parameter: 'tools[{i}].type'.", f"tools[{i}].type",
                          "missing_required_parameter")
        # Responses' function tools are flat; Chat's {"type": "function", "function": {...}} has no `name` here.
        if tool["type"] == "function" and not isinstance(tool.get("name"), str):
            raise Refused(400, f"Missing required parameter: 'tools[{i}].name'.", f"tools[{i}].name",
                          "missing_required_parameter")


def item_type(item: dict[str, Any]) -> str | None:
    """An input message may leave out `type` (EasyInputMessage: role + content)."""
    kind = item.get("type")
    return "message" if kind is None and "role" in item else kind


def _checked_items(items: list[dict[str, Any]], chain: list[dict[str, Any]],
                   store: Store) -> list[dict[str, Any]]:
    reasoning_seen = {item.get("id") for item in chain if item.get("type") == "reasoning"}
    calls_seen = {item.get("call_id") for item in chain if item.get("type") == "function_call"}
    resolved = []
    for i, item in enumerate(items):
        kind = item_type(item)
        if kind is None:
            raise Refused(400, f"Missing required parameter: 'input[{i}].type'.", f"input[{i}].type",
                          "missing_required_parameter")
        if kind not in KNOWN_ITEMS:
            raise Refused(400, f"Invalid value: '{kind}'. Supported values are: "
                          + ", ".join(f"'{k}'" for k in KNOWN_ITEMS) + ".", f"input[{i}].type", "invalid_value")
        if kind == "item_reference":
            item = _stored(item.get("id"), store)
            kind = item_type(item) or "message"
        if kind == "reasoning":
            reasoning_seen.add(_reasoning_id(item, i, store))
            if i == len(items) - 1:
                raise Refused(400, f"Item '{item.get('id')}' of type 'reasoning' was provided without its "
                              "required following item.", "input")
        elif kind == "function_call":
            paired = store.reasoning_of.get(item.get("id") or "")
            if paired is not None and paired not in reasoning_seen:
                raise Refused(400, f"Item '{item['id']}' of type 'function_call' was provided without its "
                              f"required 'reasoning' item: '{paired}'.", "input")
            calls_seen.add(item.get("call_id"))
        elif kind == "function_call_output" and item.get("call_id") not in calls_seen:
            raise Refused(400, f"No tool call found for function call output with call_id {item.get('call_id')}.",
                          "input")
        resolved.append(item)
    return resolved


def _reasoning_id(item: dict[str, Any], i: int, store: Store) -> str:
    """A replayed reasoning item is vouched for by its encrypted_content, or else by being stored."""
    blob = item.get("encrypted_content")
    if blob is None:
        return str(_stored(item.get("id"), store)["id"])
    sealed_id = opened(blob)
    if sealed_id is None or item.get("id", sealed_id) != sealed_id:
        raise Refused(400, f"The encrypted content for item {item.get('id') or sealed_id or 'rs_?'} could not be "
                      "verified.", f"input[{i}].encrypted_content", "invalid_encrypted_content")
    return sealed_id


def _stored(item_id: Any, store: Store) -> dict[str, Any]:
    if not isinstance(item_id, str) or item_id not in store.items:
        raise Refused(404, f"Item with id '{item_id}' not found. Items are not persisted when `store` is set to "
                      "false. Try again with `store` set to true, or remove this item from your input.", "input")
    return store.items[item_id]
