"""Anthropic's shapes where its clients call (/v1/messages): the error body and status, and the SSE dialect.

Errors (https://docs.anthropic.com/en/api/errors): `{"type": "error", "error": {"type", "message"},
"request_id"}`, the type following the status. The Anthropic SDK raises by status (529 →
`OverloadedError`) and retries 408/409/429/5xx unless `x-should-retry` says otherwise
(`src/anthropic/_base_client.py`), so our own "not now" refusals (no worker, circuit open, Redis
away: 503 on OpenAI routes) are its 529 `overloaded_error`, the status it retries as "busy".

Streams (https://docs.anthropic.com/en/docs/build-with-claude/streaming): every event has an
`event:` line naming its type (the SDK dispatches on it, `src/anthropic/_streaming.py`), so workers
emit whole event blocks and the API only adds resume ids. No terminator after `message_stop`;
keep-alives are `ping` events, which the SDK skips; an error after the 200 is `event: error`.
"""

from __future__ import annotations

from api.sse import Dialect, frame_blocks, frame_blocks_with_ids
from broker.errors import BrokerError
from broker.wire.messages import ErrorDetail, ErrorResponse, encoder
from broker.wire.messages_events import Ping, encode_event, error_event

PATH_PREFIX = "/v1/messages"
_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}
OVERLOADED = 529


def serves(path: str) -> bool:
    """Whether a request to `path` is answered in Anthropic's shapes."""
    return path == PATH_PREFIX or path.startswith(PATH_PREFIX + "/")


def status_of(err: BrokerError) -> int:
    return OVERLOADED if err.status == 503 else err.status


def error_type(status: int) -> str:
    return _TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


def error_body(err: BrokerError, request_id: str | None) -> bytes:
    status = status_of(err)
    detail = ErrorDetail(error_type(status), err.message)
    return encoder.encode(ErrorResponse(detail, request_id=request_id) if request_id else ErrorResponse(detail))


def _error_event(err: BrokerError) -> bytes:
    return error_event(error_type(status_of(err)), err.message)


PING = encode_event(Ping())
STREAM = Dialect(frame_blocks_with_ids, frame_blocks, b"", _error_event, PING, PING)
