"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter

from api import dispatch
from api.direct_route import DirectRoute
from broker.wire import ChatRequest, chat_request_decoder

router = APIRouter(route_class=DirectRoute)  # its one route: api/direct_route.py
router.add_api_route("/v1/chat/completions", dispatch.endpoint(chat_request_decoder), methods=["POST"],
                     openapi_extra=dispatch.openapi_body(ChatRequest))
