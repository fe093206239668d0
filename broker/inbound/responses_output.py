"""Chat Completions → OpenAI Responses: the Response object for a Chat answer, whole or streamed.

`new_response` is the Response as a stream announces it (in progress, no output, the request's
config echoed as https://platform.openai.com/docs/api-reference/responses/object lists it);
`settle` gives it its ending. `to_response` does both around a ChatCompletion's items, and
responses_stream.py around the items it builds chunk by chunk.

Item ids are minted from the response's (`msg_`/`fc_` + its suffix + the item's index): unique
as it is, and the same whenever the same answer is rebuilt. A tool call's id becomes the item's
`call_id` unchanged: the client answers with a function_call_output naming it, which to_chat turns
back into the tool message that upstream expects.
"""

from __future__ import annotations

from typing import Any

from msgspec import UNSET, UnsetType

from broker.wire.chat import ChatCompletion
from broker.wire.chat import Usage as ChatUsage
from broker.wire.responses import (
    FunctionCallItem,
    InputPart,
    InputTokensDetails,
    MessageItem,
    OutputPart,
    OutputText,
    OutputTokensDetails,
    Refusal,
    Response,
    ResponsesRequest,
    ResponseUsage,
    TextConfig,
    TextFormat,
    status_of,
)


def resp_id(response_id: str) -> str:
    return response_id if response_id.startswith("resp_") else f"resp_{response_id}"


def item_id(prefix: str, response_id: str, index: int) -> str:
    return f"{prefix}_{response_id.removeprefix('resp_')}_{index}"


def call_id(upstream_id: str | UnsetType, response_id: str, index: int) -> str:
    """The upstream's tool call id; one minted if the server sent none (some local servers do not)."""
    return upstream_id if isinstance(upstream_id, str) and upstream_id else item_id("call", response_id, index)


def new_response(req: ResponsesRequest, *, response_id: str, created_at: int) -> Response:
    def given(value: Any) -> Any:
        return None if value is UNSET else value

    return Response(
        id=resp_id(response_id), created_at=created_at, status="in_progress", model=req.model,
        instructions=given(req.instructions), parallel_tool_calls=req.parallel_tool_calls is not False,
        metadata=req.metadata or {}, tool_choice=req.tool_choice or "auto", tools=req.tools or [],
        temperature=given(req.temperature), top_p=given(req.top_p), max_output_tokens=given(req.max_output_tokens),
        max_tool_calls=given(req.max_tool_calls), previous_response_id=given(req.previous_response_id),
        reasoning=given(req.reasoning), text=req.text or TextConfig(format=TextFormat(type="text")),
        truncation=req.truncation or "disabled", background=req.background is True, user=given(req.user))


def settle(response: Response, finish_reason: str | None, usage: ChatUsage | None, *,
           completed_at: int | None) -> None:
    """Ends the response (and its items) as the upstream's finish_reason says; `completed_at` only if completed."""
    response.status, response.incomplete_details = status_of(finish_reason)
    for item in response.output:
        item.status = "completed" if response.status == "completed" else "incomplete"
    response.usage = usage_of(usage) if usage else None
    response.completed_at = completed_at if response.status == "completed" else None


def usage_of(usage: ChatUsage) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens, total_tokens=usage.total_tokens,
        input_tokens_details=InputTokensDetails(usage.prompt_detail("cached_tokens"),
                                                usage.prompt_detail("cache_write_tokens")),
        output_tokens_details=OutputTokensDetails(usage.completion_detail("reasoning_tokens")), cost=usage.cost)


def to_response(result: ChatCompletion, req: ResponsesRequest, *, response_id: str, created_at: int,
                completed_at: int | None = None) -> Response:
    response = new_response(req, response_id=response_id, created_at=created_at)
    finish: str | None = None
    if result.choices:  # to_chat asks for one choice
        choice = result.choices[0]
        finish, message = choice.finish_reason, choice.message
        parts: list[InputPart | OutputPart] = []
        if message.content:
            parts.append(OutputText(text=message.content, annotations=citations(message.annotations)))
        if message.refusal:
            parts.append(Refusal(refusal=message.refusal))
        if parts:
            response.output.append(MessageItem(id=item_id("msg", response.id, 0), role="assistant", content=parts))
        for call in message.tool_calls or []:
            index = len(response.output)
            response.output.append(FunctionCallItem(
                id=item_id("fc", response.id, index), call_id=call_id(call.id, response.id, index),
                name=call.function.name, arguments=call.function.arguments))
    settle(response, finish, result.usage, completed_at=completed_at)
    return response


def citations(chat: list[dict[str, Any]] | UnsetType) -> list[dict[str, Any]]:
    """Chat nests a citation's fields under `url_citation`; Responses has them flat. Others are dropped."""
    out: list[dict[str, Any]] = []
    for note in chat or []:
        cited = note.get("url_citation") if note.get("type") == "url_citation" else None
        if isinstance(cited, dict):
            out.append({"type": "url_citation", **{k: cited.get(k) for k in ("start_index", "end_index", "title", "url")}})
    return out
