"""GET /v1/models and /v1/models/{id}: the public model names this key may use."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.state import BrokerState
from broker.config import ModelGroup
from broker.wire import ModelCard, ModelList, json_encoder

router = APIRouter()


def _card(state: BrokerState, name: str, group: ModelGroup) -> ModelCard:
    return ModelCard(name, state.started, group.deployments[0].provider)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(request.headers.get("authorization"))
    names = state.router.visible_models(principal.tenant)
    cards = [_card(state, name, state.router.group(principal.tenant, name)) for name in names]
    return Response(json_encoder.encode(ModelList(cards)), media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(request.headers.get("authorization"))
    # 404 unless this tenant may use it; `provider/model-id` too, for a passthrough tenant.
    group = state.router.group(principal.tenant, model_id)
    return Response(json_encoder.encode(_card(state, model_id, group)), media_type="application/json")
