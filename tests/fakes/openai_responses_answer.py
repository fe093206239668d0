"""What the fake Responses upstream answers: a whole Response object, picked from the request so
that each scenario is one request away (https://platform.openai.com/docs/api-reference/responses/object).

    reasoning set (any effort)       a reasoning item first; summary only with reasoning.summary,
                                       encrypted_content only with include reasoning.encrypted_content
    a web_search(_preview) tool      a web_search_call, then a message citing https://example.com/…
    a function tool, and the input   one function_call to the first (or the tool_choice-named) function,
      does not end with its output     a string ("Paris") for each required property
    otherwise                        "native answer: <the last user words>", or after a tool's output
                                       "native answer: the tool said <output>"

max_output_tokens counts reasoning too, as OpenAI's does: when the words do not fit, the text is
cut and the response is `incomplete` (reason max_output_tokens). One word is one token.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
import urllib.parse
from typing import Any

from tests.fakes.openai_responses_rules import ResponsesRequest, item_type
from tests.fakes.openai_responses_seal import seal
from tests.fakes.openai_rules import pieces

ENCRYPTED = "reasoning.encrypted_content"
CITY = "Paris"
_WORD = re.compile(r"\s*\S+")
_ids = itertools.count()


def new_id(prefix: str) -> str:
    return f"{prefix}{os.getpid():x}{next(_ids):024x}"


def words(text: str) -> list[str]:
    """The text as streamed, one delta (and one token) per word with its leading space."""
    return _WORD.findall(text)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def last_user_text(conversation: list[dict[str, Any]]) -> str:
    for item in reversed(conversation):
        if item_type(item) == "message" and item.get("role") == "user":
            return _text_of(item.get("content"))
    return ""


def _input_tokens(req: ResponsesRequest, conversation: list[dict[str, Any]]) -> int:
    texts = [req.instructions or ""]
    for item in conversation:
        texts += [_text_of(item.get("content")), _text_of(item.get("output")), str(item.get("arguments") or "")]
    return max(1, sum(len(t.split()) for t in texts))


def _arguments(tool: dict[str, Any]) -> str:
    required = (tool.get("parameters") or {}).get("required") or []
    return json.dumps({name: CITY for name in required})


def _function(req: ResponsesRequest) -> dict[str, Any] | None:
    functions = [t for t in req.tools or [] if t["type"] == "function"]
    choice = req.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return next((t for t in functions if t["name"] == choice.get("name")), None)
    return functions[0] if functions else None


def _message(text: str, annotations: list[dict[str, Any]], budget: int | None) -> tuple[dict[str, Any], bool]:
    text = text.rstrip()  # trailing space would be in `text` but in no delta: the stream must add up to it
    said = words(text)
    cut = budget is not None and len(said) > budget
    if cut:
        text = "".join(said[:max(budget or 0, 0)])
        annotations = [a for a in annotations if a["end_index"] <= len(text)]
    part = {"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}
    return {"id": new_id("msg_"), "type": "message", "status": "incomplete" if cut else "completed",
            "content": [part], "role": "assistant"}, cut


def _cited(query: str) -> tuple[str, list[dict[str, Any]]]:
    source = "example.com"
    text = f"native answer: {query} ({source})"
    start = text.rindex(source)
    url = "https://example.com/" + (urllib.parse.quote("-".join(query.split())) or "search")
    return text, [{"type": "url_citation", "start_index": start, "end_index": start + len(source),
                   "url": url, "title": f"Example result for {query}"}]


def output(req: ResponsesRequest, conversation: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, bool]:
    """The output items, their reasoning tokens, and whether max_output_tokens cut them."""
    query = " ".join(last_user_text(conversation).split())
    items: list[dict[str, Any]] = []
    reasoning_tokens = 0
    if req.reasoning is not None:
        thought = f"Thinking about {query or 'the request'}"
        reasoning_tokens = len(words(thought))
        rs: dict[str, Any] = {"id": new_id("rs_"), "type": "reasoning", "summary": []}
        if req.reasoning.get("summary"):
            rs["summary"] = [{"type": "summary_text", "text": thought}]
        if ENCRYPTED in (req.include or []):
            rs["encrypted_content"] = seal(rs["id"], thought)
        items.append(rs)
    budget = None if req.max_output_tokens is None else req.max_output_tokens - reasoning_tokens
    tools_allowed = req.tool_choice != "none"
    searches = tools_allowed and any(str(t["type"]).startswith("web_search") for t in req.tools or [])
    function = _function(req) if tools_allowed else None
    last = conversation[-1] if conversation else {}
    if searches:
        items.append({"id": new_id("ws_"), "type": "web_search_call", "status": "completed",
                      "action": {"type": "search", "query": query}})
        message, cut = _message(*_cited(query), budget)
        return [*items, message], reasoning_tokens, cut
    if function is not None and item_type(last) != "function_call_output":
        items.append({"id": new_id("fc_"), "type": "function_call", "status": "completed",
                      "arguments": _arguments(function), "call_id": new_id("call_"), "name": function["name"]})
        return items, reasoning_tokens, False
    if item_type(last) == "function_call_output":
        text = f"native answer: the tool said {_text_of(last.get('output'))}"
    else:
        text = f"native answer: {query}"
    message, cut = _message(text, [], budget)
    return [*items, message], reasoning_tokens, cut


def response_object(req: ResponsesRequest, conversation: list[dict[str, Any]]) -> dict[str, Any]:
    """The Response as OpenAI returns it: every field the spec requires, present even when null."""
    items, reasoning_tokens, cut = output(req, conversation)
    produced = reasoning_tokens + sum(
        len(words(p["text"])) for item in items if item["type"] == "message" for p in item["content"]) + sum(
        len(pieces(item["arguments"])) for item in items if item["type"] == "function_call")
    consumed = _input_tokens(req, conversation)
    created = int(time.time())
    reasoning = req.reasoning or {}
    return {
        "id": new_id("resp_"), "object": "response", "created_at": created,
        "status": "incomplete" if cut else "completed", "background": False,
        "completed_at": None if cut else created, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": None, "model": req.model, "output": items,
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": "default", "store": req.store is not False,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": req.text or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": req.tool_choice or "auto", "tools": req.tools or [], "top_logprobs": 0,
        "top_p": 1.0 if req.top_p is None else req.top_p, "truncation": req.truncation or "disabled",
        "usage": {"input_tokens": consumed, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens": produced, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
                  "total_tokens": consumed + produced},
        "user": None, "metadata": req.metadata or {},
    }
