"""POST /v1/moderations (https://platform.openai.com/docs/api-reference/moderations/create)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api import dispatch
from api.auth import Principal
from api.direct_route import DirectRoute
from broker.queue.payloads import ModerationPayload, Payload
from broker.wire.moderations import ModerationRequest, moderation_request_decoder


async def _payload(request: ModerationRequest, body: bytes, _: Request, __: Principal) -> Payload:
    return ModerationPayload(request, body)


router = APIRouter(route_class=DirectRoute)
router.add_api_route("/v1/moderations", dispatch.endpoint(moderation_request_decoder, _payload), methods=["POST"])
