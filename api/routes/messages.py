"""POST /v1/messages (Anthropic's Messages API) for every configured model, and its count_tokens.

Clients send their key as `x-api-key` (or `Authorization: Bearer`), `anthropic-version` (accepted, as
the SDK always sends it) and maybe `anthropic-beta`, which travels with the job to Anthropic
deployments and nowhere else. Errors on these paths are Anthropic-shaped (api/anthropic.py).

The job carries the body as received and its Chat Completions form (broker/queue/payloads.py
`MessagesPayload`): routing, limits, budgets, failover and the ledger treat it as a chat job, and
the worker relays the body to an Anthropic deployment or translates for any other
(workers/messages.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api import dispatch
from api.auth import credentials
from api.decode import decode_body, read_body
from api.state import BrokerState
from broker.inbound.messages import to_chat
from broker.queue.payloads import MessagesPayload
from broker.routing.capabilities import estimate_tokens
from broker.wire.messages import (
    MessagesRequest,
    TokenCount,
    count_tokens_request_decoder,
    encoder,
    messages_request_decoder,
)

router = APIRouter()


def _payload(decoded: MessagesRequest, body: bytes, request: Request) -> MessagesPayload:
    return MessagesPayload(to_chat(decoded), body, request.headers.get("anthropic-beta", ""))


router.add_api_route("/v1/messages", dispatch.endpoint(messages_request_decoder, _payload), methods=["POST"])


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    """An estimate, by the rules admission charges with (broker/routing/capabilities.py), for any model
    this key may use: the API calls no provider, and a count is only ever a planning figure."""
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    decoded = decode_body(await read_body(request, state.config.server.max_body_bytes), count_tokens_request_decoder)
    state.router.group(principal.tenant, decoded.model)  # 404 for a model this key may not use
    chat = to_chat(decoded)
    return Response(encoder.encode(TokenCount(estimate_tokens(chat))), media_type="application/json")
