"""The admin key at the operator's pages and API (/status, /console, /admin/*): config `admin.keys`.

Sent as `Authorization: Bearer <key>`, or as the password of HTTP Basic auth, which browsers ask for
themselves (401 with `WWW-Authenticate: Basic`) and then send again with the pages' own fetches.
Without it every such route answers 401 (403 for a tenant's key) with the edge's error body and
nothing else: no tenant, no figure.
"""

from __future__ import annotations

import base64
import binascii

from fastapi import Request

from api.state import BrokerState
from broker.errors import AuthenticationFailed

CHALLENGE = {"www-authenticate": 'Basic realm="llm-broker status", charset="UTF-8"'}


def as_bearer(authorization: str | None) -> str | None:
    """HTTP Basic's password as a bearer key; any other header as it is."""
    if authorization is None or authorization[:6].lower() != "basic ":
        return authorization
    try:
        _, _, password = base64.b64decode(authorization[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return f"Bearer {password}"


def admin(request: Request) -> BrokerState:
    """The process's state, once the request has shown the admin key."""
    state: BrokerState = request.app.state.broker
    try:
        state.auth.admin(as_bearer(request.headers.get("authorization")))
    except AuthenticationFailed as exc:
        exc.headers = {**exc.headers, **CHALLENGE}  # a browser asks for the key
        raise
    return state
