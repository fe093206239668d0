"""The request rules the real Messages API enforces, as the fake's validator (https://docs.anthropic.com/en/api/messages).

A translation bug must fail here exactly as it would against api.anthropic.com,
so each rule returns a 400 `invalid_request_error` message shaped like the
real one (`<path>: <problem>`). The real API merges consecutive same-role turns
today; older versions rejected them, and this fake still does, so a test proves
our adapter merges them itself (it must, for tool results to be legal at all).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Any

TOP_LEVEL = {
    "model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k", "tools",
    "tool_choice", "stream", "metadata", "thinking", "output_config", "service_tier",
}
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
BLOCKS = {"user": {"text", "image", "tool_result", "document"},
          "assistant": {"text", "tool_use", "thinking", "redacted_thinking"}}
# Thinking blocks come back signed; a later turn that carries one back must carry it unchanged, or the
# API refuses it (https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking). The fake
# signs with a key of its own, as Anthropic does, so a signature edited in transit fails the same way.
_SIGNING_KEY = b"fake-anthropic-thinking-key"


def sign(thinking: str) -> str:
    digest = hmac.new(_SIGNING_KEY, thinking.encode(), hashlib.sha256).digest()
    return base64.b64encode(b"EqQB" + digest * 3).decode()  # long and opaque, like the real ones


class Invalid(Exception):
    """One broken rule; its text is the 400's message."""


def validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise Invalid("Input should be a valid dictionary")
    for name in body:
        if name not in TOP_LEVEL:
            raise Invalid(f"{name}: Extra inputs are not permitted")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise Invalid(f"{name}: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 0:
        raise Invalid("max_tokens: Input should be a valid integer, greater than or equal to 0")
    _check_sampling(body)
    _check_system(body.get("system"))
    names = _check_tools(body.get("tools"), body.get("tool_choice"))
    _check_messages(body["messages"], names)


def _check_sampling(body: dict[str, Any]) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise Invalid(f"{name}: Input should be less than or equal to 1")
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise Invalid("stop_sequences: Input should be a valid list of strings")
    if "metadata" in body and set(body["metadata"]) - {"user_id"}:
        raise Invalid("metadata: Extra inputs are not permitted")


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list) or any(not isinstance(b, dict) or b.get("type") != "text" for b in system):
        raise Invalid("system: Input should be a valid string or a list of text blocks")


def _check_tools(tools: Any, choice: Any) -> set[str]:
    names: set[str] = set()
    for i, tool in enumerate(tools or []):
        extra = set(tool) - {"name", "description", "input_schema", "strict", "cache_control", "type"}
        if extra:
            raise Invalid(f"tools.{i}.{sorted(extra)[0]}: Extra inputs are not permitted")
        if not TOOL_NAME.match(str(tool.get("name", ""))):
            raise Invalid(f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise Invalid(f"tools.{i}.input_schema: Input schema must have type 'object'")
        names.add(tool["name"])
    if choice is None:
        return names
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise Invalid("tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'")
    if kind == "none" and "disable_parallel_tool_use" in choice:
        raise Invalid("tool_choice.none.disable_parallel_tool_use: Extra inputs are not permitted")
    if kind == "tool" and choice.get("name") not in names:
        raise Invalid(f"tool_choice: Tool '{choice.get('name')}' not found in provided tools")
    if kind in ("any", "tool") and not names:
        raise Invalid("tool_choice: tool_choice may only be specified while providing tools")
    return names


def _check_messages(messages: Any, tool_names: set[str]) -> None:
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    pending: list[str] = []  # tool_use ids the next (user) message must answer
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in BLOCKS:
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if extra := sorted(set(message) - {"role", "content"}):
            raise Invalid(f"messages.{i}.{extra[0]}: Extra inputs are not permitted")
        if i == 0 and role != "user":
            raise Invalid('messages: first message must use the "user" role')
        if i and messages[i - 1].get("role") == role:
            raise Invalid(f'messages: roles must alternate between "user" and "assistant", '
                          f'but found multiple "{role}" roles in a row')
        blocks = _blocks(message.get("content"), i, role, last=i == len(messages) - 1)
        answered = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        if missing := [t for t in pending if t not in answered]:
            raise Invalid(f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
                          f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                          "`tool_result` block in the next message.")
        if unexpected := [t for t in answered if t not in pending]:
            raise Invalid(f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: "
                          f"{', '.join(unexpected)}. Each `tool_result` block must have a corresponding "
                          "`tool_use` block in the previous message.")
        if any(b["type"] != "tool_result" for b in blocks[:len(answered)]):
            raise Invalid(f"messages.{i}: `tool_result` blocks must come before any other content in a user turn")
        pending = [b["id"] for b in blocks if b["type"] == "tool_use"]
        if len(set(pending)) != len(pending):
            raise Invalid(f"messages.{i}: `tool_use` ids must be unique")
        if (pending or answered) and not tool_names:
            raise Invalid("messages: Requests which include `tool_use` or `tool_result` blocks must define tools.")


def _blocks(content: Any, i: int, role: str, *, last: bool) -> list[dict[str, Any]]:
    if isinstance(content, str):
        if not content and not (last and role == "assistant"):
            raise Invalid(f"messages.{i}: all messages must have non-empty content except for the optional "
                          "final assistant message")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or (not content and not (last and role == "assistant")):
        raise Invalid(f"messages.{i}: all messages must have non-empty content except for the optional "
                      "final assistant message")
    for j, block in enumerate(content):
        path = f"messages.{i}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in BLOCKS[role]:
            raise Invalid(f"{path}.type: `{kind}` blocks are not allowed in {role} messages")
        if kind == "text" and not (isinstance(block.get("text"), str) and block["text"]):
            raise Invalid(f"{path}.text: text content blocks must be non-empty")
        if kind == "image":
            _check_image(block.get("source"), path)
        if kind == "tool_use" and not (isinstance(block.get("id"), str) and isinstance(block.get("name"), str)
                                       and isinstance(block.get("input"), dict)):
            raise Invalid(f"{path}: tool_use blocks need a string `id` and `name` and an object `input`")
        if kind == "thinking" and block.get("signature") != sign(str(block.get("thinking"))):
            raise Invalid(f"{path}: Invalid `signature` in `thinking` block")
        if kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise Invalid(f"{path}.tool_use_id: Field required")
            for k, inner in enumerate(block.get("content") if isinstance(block.get("content"), list) else []):
                if inner.get("type") == "image":
                    _check_image(inner.get("source"), f"{path}.content.{k}")
                elif inner.get("type") != "text" or not inner.get("text"):
                    raise Invalid(f"{path}.content.{k}: text content blocks must be non-empty")
    return content


def _check_image(source: Any, path: str) -> None:
    if not isinstance(source, dict):
        raise Invalid(f"{path}.source: Field required")
    if source.get("type") == "url":
        if not str(source.get("url", "")).startswith(("http://", "https://")):
            raise Invalid(f"{path}.source.url: Input should be a valid URL")
        return
    if source.get("type") != "base64":
        raise Invalid(f"{path}.source: Input tag does not match any of the expected tags: 'base64', 'url'")
    if source.get("media_type") not in IMAGE_TYPES:
        raise Invalid(f"{path}.source.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' "
                      "or 'image/webp'")
    try:
        base64.b64decode(str(source.get("data", "")), validate=True)
    except binascii.Error:
        raise Invalid(f"{path}.source.data: The image data is not valid base64") from None
