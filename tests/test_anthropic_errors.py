"""Every refusal on /v1/messages in Anthropic's shape: the type follows the status as Anthropic's API
does (https://docs.anthropic.com/en/api/errors), and our own "not now" (503) is its 529."""

from __future__ import annotations

import json

import pytest

from api import anthropic
from broker.errors import (
    AuthenticationFailed,
    BrokerError,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)


@pytest.mark.parametrize("error, status, kind", [
    (InvalidRequest("bad"), 400, "invalid_request_error"),
    (InvalidRequest("too big", status=413), 413, "request_too_large"),
    (AuthenticationFailed("who?"), 401, "authentication_error"),
    (PermissionDenied("no"), 403, "permission_error"),
    (ModelNotFound("none"), 404, "not_found_error"),
    (RateLimited("slow down", retry_after_s=3), 429, "rate_limit_error"),
    (BrokerError("ours"), 500, "api_error"),
    (UpstreamError("theirs"), 502, "api_error"),
    (UpstreamTimeout("late"), 504, "timeout_error"),
    (Unavailable("not now", retry_after_s=1), 529, "overloaded_error"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_each_error_has_anthropics_type_for_its_status(error: BrokerError, status: int, kind: str) -> None:
    assert anthropic.status_of(error) == status
    body = json.loads(anthropic.error_body(error, "req_1"))
    assert body == {"type": "error", "error": {"type": kind, "message": error.message}, "request_id": "req_1"}
    event = anthropic.STREAM.error_event(error).decode()
    assert event.startswith("event: error\ndata: ") and json.loads(event.split("data: ", 1)[1])["error"]["type"] == kind


def test_the_routes_it_answers_for() -> None:
    assert anthropic.serves("/v1/messages") and anthropic.serves("/v1/messages/count_tokens")
    assert not anthropic.serves("/v1/messagesx") and not anthropic.serves("/v1/chat/completions")
