"""GET /v1/models and /v1/models/{id}: the public model names this key may use.

In OpenAI's shape, or in Anthropic's when the request carries `anthropic-version`, as the Anthropic
SDK's `models.list()` always does (https://docs.anthropic.com/en/api/models-list): Claude Code's
model discovery reads that list.
"""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.auth import credentials
from api.state import BrokerState
from broker.config import ModelGroup
from broker.wire import ModelCard, ModelList, json_encoder
from broker.wire.messages import ModelInfo, ModelInfoList

router = APIRouter()


def _card(state: BrokerState, name: str, group: ModelGroup) -> ModelCard:
    return ModelCard(name, state.started, group.deployments[0].provider)


def _anthropic_card(state: BrokerState, name: str) -> ModelInfo:
    created = datetime.fromtimestamp(state.started, timezone.utc).isoformat().replace("+00:00", "Z")
    return ModelInfo(id=name, display_name=name, created_at=created)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    names = state.router.visible_models(principal.tenant)
    if "anthropic-version" in request.headers:
        data = [_anthropic_card(state, name) for name in names]
        listed = ModelInfoList(data=data, first_id=names[0] if names else None, last_id=names[-1] if names else None)
        return Response(json_encoder.encode(listed), media_type="application/json")
    cards = [_card(state, name, state.router.group(principal.tenant, name)) for name in names]
    return Response(json_encoder.encode(ModelList(cards)), media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(credentials(request.headers))
    # 404 unless this tenant may use it; `provider/model-id` too, for a passthrough tenant.
    group = state.router.group(principal.tenant, model_id)
    if "anthropic-version" in request.headers:
        return Response(json_encoder.encode(_anthropic_card(state, model_id)), media_type="application/json")
    return Response(json_encoder.encode(_card(state, model_id, group)), media_type="application/json")
