"""A Response, streamed as OpenAI streams it (PROTOCOLS.md §10.3; the event types of openai-python's
`types/responses/response_stream_event.py`).

Every event goes as `event: <type>` + `data: <json with the same type>` and carries
`sequence_number` 0, 1, 2, …; items are announced (`output_item.added`, `content_part.added`)
before their deltas, with dense indexes, because the SDK's stream accumulator appends on
announcement and indexes by position. No `data: [DONE]` at the end: whether OpenAI sends one is
an open question (PROTOCOLS §10, open questions), so a gateway must cope without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from tests.fakes.openai_responses_answer import words
from tests.fakes.openai_rules import pieces

SERVER_ERROR = "The server had an error while processing your request."
_encoder = msgspec.json.Encoder()
Event = dict[str, Any]


def encoded(events: list[Event]) -> list[bytes]:
    out = []
    for n, event in enumerate(events):
        data = {"type": event["type"], "sequence_number": n, **event}
        out.append(b"event: " + event["type"].encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n")
    return out


def _opening(response: dict[str, Any]) -> list[Event]:
    snapshot = {**response, "status": "in_progress", "output": [], "usage": None, "completed_at": None,
                "incomplete_details": None}
    return [{"type": "response.created", "response": snapshot},
            {"type": "response.in_progress", "response": snapshot}]


def completed(response: dict[str, Any]) -> list[Event]:
    """The whole stream of a finished (completed or incomplete) response."""
    events = _opening(response)
    for index, item in enumerate(response["output"]):
        events += _item(index, item)
    events.append({"type": f"response.{response['status']}", "response": response})
    return events


def midstream_error(response: dict[str, Any]) -> list[Event]:
    """Cut after the second text delta (after the opening if there is no text), then `error`."""
    events = completed(response)
    deltas = [i for i, e in enumerate(events) if e["type"] == "response.output_text.delta"]
    cut = deltas[1] + 1 if len(deltas) > 1 else 2
    return [*events[:cut], {"type": "error", "code": "server_error", "message": SERVER_ERROR, "param": None}]


def failed_early(response: dict[str, Any]) -> list[Event]:
    failed = {**_opening(response)[0]["response"], "status": "failed",
              "error": {"code": "server_error", "message": SERVER_ERROR}}
    return [*_opening(response), {"type": "response.failed", "response": failed}]


def _item(index: int, item: dict[str, Any]) -> list[Event]:
    where = {"item_id": item["id"], "output_index": index}
    match item["type"]:
        case "reasoning":
            opened = {"id": item["id"], "type": "reasoning", "summary": []}
            body = list(_summary(where, item["summary"]))
        case "message":
            opened = {**item, "status": "in_progress", "content": []}
            body = [e for c, part in enumerate(item["content"]) for e in _part({**where, "content_index": c}, part)]
        case "function_call":
            opened = {**item, "status": "in_progress", "arguments": ""}
            body = [{"type": "response.function_call_arguments.delta", **where, "delta": p}
                    for p in pieces(item["arguments"])]
            body.append({"type": "response.function_call_arguments.done", **where, "name": item["name"],
                         "arguments": item["arguments"]})
        case "web_search_call":
            opened = {**item, "status": "in_progress"}
            body = [{"type": f"response.web_search_call.{step}", **where}
                    for step in ("in_progress", "searching", "completed")]
        case _:
            opened, body = item, []
    return [{"type": "response.output_item.added", "output_index": index, "item": opened}, *body,
            {"type": "response.output_item.done", "output_index": index, "item": item}]


def _summary(where: dict[str, Any], summary: list[dict[str, Any]]) -> Iterator[Event]:
    for s, part in enumerate(summary):
        at = {**where, "summary_index": s}
        yield {"type": "response.reasoning_summary_part.added", **at, "part": {"type": "summary_text", "text": ""}}
        for word in words(part["text"]):
            yield {"type": "response.reasoning_summary_text.delta", **at, "delta": word}
        yield {"type": "response.reasoning_summary_text.done", **at, "text": part["text"]}
        yield {"type": "response.reasoning_summary_part.done", **at, "part": part}


def _part(at: dict[str, Any], part: dict[str, Any]) -> Iterator[Event]:
    yield {"type": "response.content_part.added", **at,
           "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}
    for word in words(part["text"]):
        yield {"type": "response.output_text.delta", **at, "delta": word, "logprobs": []}
    for a, annotation in enumerate(part["annotations"]):
        yield {"type": "response.output_text.annotation.added", **at, "annotation_index": a,
               "annotation": annotation}
    yield {"type": "response.output_text.done", **at, "text": part["text"], "logprobs": []}
    yield {"type": "response.content_part.done", **at, "part": part}
