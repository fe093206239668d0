"""Chat answers as a Chat provider returns them, and the named SSE events an inbound protocol sends back.

Shared by the tests of the inbound translations (tests/test_messages_translate.py,
tests/test_responses_translate.py): each feeds a ChatCompletion or ChatChunks to its
translator and reads the `event: <type>` + `data: <json>` frames it writes.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from broker.wire import ChatChunk, ChatCompletion


def completion(message: dict[str, Any], finish_reason: str | None = "stop", usage: Any = None) -> ChatCompletion:
    body = {"id": "c", "created": 1, "model": "up", "usage": msgspec.to_builtins(usage),
            "choices": [{"index": 0, "finish_reason": finish_reason, "message": {"content": None, **message}}]}
    return msgspec.json.decode(json.dumps(body), type=ChatCompletion)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None,
          ) -> ChatChunk:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {"id": "c", "created": 1, "model": "up", "choices": choices, "usage": usage}
    return msgspec.json.decode(json.dumps(body), type=ChatChunk)


def call(index: int, id: str | None = None, name: str | None = None, arguments: str = "") -> dict[str, Any]:
    """A tool call delta: the first fragment of a call has its id and name, the later ones only arguments."""
    fragment: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if id is not None:
        fragment.update(id=id, type="function")
        fragment["function"]["name"] = name
    return {"tool_calls": [fragment]}


# Text, then two tool calls whose arguments interleave, then the usage after the finish_reason: what
# OpenAI streams for parallel calls, and the hardest order for a protocol whose blocks cannot interleave.
TEXT_THEN_PARALLEL_CALLS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Checking "}), chunk({"content": "both."}),
    chunk(call(0, "call_1", "get_weather", "")), chunk(call(0, arguments='{"city":')),
    chunk(call(1, "call_2", "get_weather", '{"ci')),  # the second call starts before the first is done
    chunk(call(0, arguments=' "Paris"}')), chunk(call(1, arguments='ty": "Tokyo"}')),
    chunk({}, "tool_calls"),
    chunk(usage={"prompt_tokens": 500, "completion_tokens": 30, "total_tokens": 530,
                 "prompt_tokens_details": {"cached_tokens": 100}}),
]


def events(frames: list[bytes]) -> list[dict[str, Any]]:
    """Each frame is one event whose `event:` line names its JSON's type."""
    out = []
    for frame in frames:
        name, data = frame.removesuffix(b"\n\n").split(b"\n")
        payload = json.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + payload["type"].encode()
        out.append(payload)
    return out
