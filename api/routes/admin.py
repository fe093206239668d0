"""/admin/keys: create, list and revoke API keys at run time (broker/api_keys.py), with the admin key only.

    POST   /admin/keys             {"tenant", "name"?, "rpm"?, "tpm"?, "max_concurrent"?,
                                    "daily_budget_usd"?, "monthly_budget_usd"?} → 201, the key (shown once)
    GET    /admin/keys?tenant=T    {"object": "list", "data": [...]}: names, ids, limits; never a key
    DELETE /admin/keys/{name|id}   the revoked key

Every process learns of a change within about a second (api/live_keys.py); the process that
answers reloads before answering, so a client that made a key can use it here at once.
"""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from api import admin_auth
from api.decode import decode_body, read_body
from api.state import BrokerState
from broker import api_keys
from broker.errors import InvalidRequest
from broker.wire import json_encoder

router = APIRouter()

MAX_BODY_BYTES = 16 * 1024  # a key's settings are a few fields
_new_key = msgspec.json.Decoder(api_keys.NewKey)


class KeyList(msgspec.Struct):
    data: list[api_keys.KeyInfo]
    object: str = "list"


class KeyDeleted(msgspec.Struct):
    id: str
    name: str
    tenant: str
    object: str = "api_key.deleted"
    deleted: bool = True


def _admin(request: Request) -> BrokerState:
    return admin_auth.admin(request)  # Basic auth too: the console (api/routes/console.py) calls these


def _json(body: object, status: int = 200) -> Response:
    return Response(json_encoder.encode(body), status_code=status, media_type="application/json")


@router.post("/admin/keys")
async def create_key(request: Request) -> Response:
    state = _admin(request)
    spec = decode_body(await read_body(request, MAX_BODY_BYTES), _new_key)
    made = await api_keys.create(state.redis, state.keys, state.config, spec)
    await state.live_keys.refresh()
    return _json(made, 201)


@router.get("/admin/keys")
async def list_keys(request: Request) -> Response:
    state = _admin(request)
    tenant = request.query_params.get("tenant")
    if tenant is not None and tenant not in state.config.tenants:
        raise InvalidRequest(f"Unknown tenant {tenant!r}.", param="tenant", code="unknown_tenant")
    found = await api_keys.listing(state.redis, state.keys, state.config, tenant)
    return _json(KeyList(found))


@router.delete("/admin/keys/{ref}")
async def revoke_key(request: Request, ref: str) -> Response:
    state = _admin(request)
    gone = await api_keys.revoke(state.redis, state.keys, state.config, ref)
    await state.live_keys.refresh()
    return _json(KeyDeleted(gone.id, gone.name, gone.tenant))
