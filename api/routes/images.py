"""POST /v1/images/generations (https://platform.openai.com/docs/api-reference/images/create)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api import dispatch
from api.auth import Principal
from api.direct_route import DirectRoute
from broker.queue.payloads import ImagePayload, Payload
from broker.wire.images import ImageRequest, image_request_decoder


async def _payload(request: ImageRequest, body: bytes, _: Request, __: Principal) -> Payload:
    return ImagePayload(request, body)


router = APIRouter(route_class=DirectRoute)  # its one route: api/direct_route.py
router.add_api_route("/v1/images/generations", dispatch.endpoint(image_request_decoder, _payload), methods=["POST"])
