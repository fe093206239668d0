"""POST /v1/messages (Anthropic's Messages API) for every configured model, and /v1/messages/count_tokens.

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

from api import dispatch
from api.auth import Principal
from api.direct_route import DirectRoute
from broker.inbound.messages import to_chat
from broker.queue.payloads import CountTokensPayload, MessagesPayload
from broker.wire.messages import (
    CountTokensRequest,
    MessagesRequest,
    count_tokens_request_decoder,
    messages_request_decoder,
)

router = APIRouter()


async def _payload(decoded: MessagesRequest, body: bytes, request: Request, principal: Principal) -> MessagesPayload:
    return MessagesPayload(to_chat(decoded), body, request.headers.get("anthropic-beta", ""))


router.add_api_route("/v1/messages", dispatch.endpoint(messages_request_decoder, _payload), methods=["POST"],
                     route_class_override=DirectRoute)


async def _count_payload(decoded: CountTokensRequest, body: bytes, request: Request,
                         principal: Principal) -> CountTokensPayload:
    return CountTokensPayload(to_chat(decoded), body, request.headers.get("anthropic-beta", ""))


# Counted by an Anthropic deployment itself (a job like any: the API calls no provider), estimated by
# admission's rules for any other (broker/routing/capabilities.py): either way, never billed.
router.add_api_route("/v1/messages/count_tokens", dispatch.endpoint(count_tokens_request_decoder, _count_payload),
                     methods=["POST"], route_class_override=DirectRoute)
