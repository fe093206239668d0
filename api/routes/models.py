"""GET /v1/models and /v1/models/{id}: the public model names this key may use."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.state import BrokerState
from broker.wire import ModelCard, ModelList, json_encoder

router = APIRouter()


def _card(state: BrokerState, name: str) -> ModelCard:
    return ModelCard(name, state.started, state.config.models[name][0].provider)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(request.headers.get("authorization"))
    cards = [_card(state, name) for name in state.router.visible_models(principal.tenant)]
    return Response(json_encoder.encode(ModelList(cards)), media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    state: BrokerState = request.app.state.broker
    principal = state.auth.authenticate(request.headers.get("authorization"))
    state.router.resolve(principal.tenant, model_id)  # 404 unless visible to this tenant
    return Response(json_encoder.encode(_card(state, model_id)), media_type="application/json")
