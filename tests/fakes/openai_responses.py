"""The fake upstream's `POST /v1/responses` (and Azure's `/openai/responses?api-version=`): OpenAI's
Responses API, as a native pass-through deployment sees it (https://platform.openai.com/docs/api-reference/responses).

The broker relays such a request nearly untouched, so the fake checks what OpenAI checks
(openai_responses_rules.py) and answers whole Response objects (openai_responses_answer.py),
streamed event by event (openai_responses_events.py). Stored responses live in this app's memory:
a `previous_response_id` the fake never issued is refused, as OpenAI refuses a gateway's own ids.

The request's `model` (any "@suffix" ignored) picks a failure, besides `guard`'s fail-429/500/503:

    midstream-error   stream: created, in_progress, a message with two deltas, then an `error` event
                        and the end; non-stream: 500
    fails-early       stream: created, in_progress, then response.failed; non-stream: 500

What arrived is in `app.state.requests` (RecordedRequest: method, path, headers, body), as for every
route of the OpenAI fake: a test reads there what the broker sent up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes import openai_responses_events as events_of
from tests.fakes.openai_responses_answer import new_id, response_object
from tests.fakes.openai_responses_rules import Refused, Store, decode, validate

_encoder = msgspec.json.Encoder()
_FAILING_STREAMS = {"midstream-error": events_of.midstream_error, "fails-early": events_of.failed_early}


def _refusal(e: Refused) -> Response:
    # openai_upstream.error_response's shape (all four keys, an x-request-id), without importing it
    # back: openai_upstream imports this module.
    error = {"message": e.message, "type": "server_error" if e.status >= 500 else "invalid_request_error",
             "param": e.param, "code": e.code}
    return Response(_encoder.encode({"error": error}), e.status, {"x-request-id": new_id("req_")},
                    media_type="application/json")


async def _sent(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def responses_routes(record: Callable[[Request, Any], None], guard: Callable[[Request, Any], Response | None],
                     events: Callable[[AsyncIterator[bytes]], Response]) -> list[Route]:
    """`record` logs the request, `guard` answers auth/injected failures, `events` makes an SSE response."""
    store = Store()

    async def create(request: Request) -> Response:
        try:
            body = msgspec.json.decode(await request.body())
        except msgspec.DecodeError:
            body = None
        record(request, body)
        model = str(body.get("model") or "").split("@", 1)[0] if isinstance(body, dict) else ""
        if (denied := guard(request, {**body, "model": model} if isinstance(body, dict) else {})) is not None:
            return denied
        try:
            req = decode(body)
            conversation = validate(req, store)
        except Refused as e:
            return _refusal(e)
        if model in _FAILING_STREAMS and not req.stream:
            return _refusal(Refused(500, events_of.SERVER_ERROR + " Sorry about that!"))
        response = response_object(req, conversation)
        if model in _FAILING_STREAMS:
            return events(_sent(events_of.encoded(_FAILING_STREAMS[model](response))))
        store.keep(response["id"], conversation, response["output"], stored=response["store"])
        if req.stream:
            return events(_sent(events_of.encoded(events_of.completed(response))))
        return Response(_encoder.encode(response), headers={"x-request-id": new_id("req_")},
                        media_type="application/json")

    async def azure_create(request: Request) -> Response:
        # Azure OpenAI: api-version required, the key in `api-key`; guard reads `authorization`.
        if "api-version" not in request.query_params:
            return _refusal(Refused(404, "Resource not found"))
        if (key := request.headers.get("api-key")) and "authorization" not in request.headers:
            request.scope["headers"] = [*request.scope["headers"], (b"authorization", f"Bearer {key}".encode())]
        return await create(Request(request.scope, request.receive))

    return [Route("/v1/responses", create, methods=["POST"]),
            Route("/openai/responses", azure_create, methods=["POST"])]
