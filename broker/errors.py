"""One error hierarchy for the whole broker, rendered OpenAI-shaped at the edge.

    BrokerError                500    server_error; status, type, code, retryable (class attributes)
    ├─ InvalidRequest          400    invalid_request_error (param = the decode path)
    ├─ AuthenticationFailed    401    invalid_api_key
    ├─ PermissionDenied        403    permission_denied
    ├─ ModelNotFound           404    model_not_found
    ├─ RateLimited             429    rate_limit_exceeded, type requests (retry_after)
    │  ├─ TokensRateLimited    429    type tokens (the tokens-per-minute limit)
    │  └─ OverBudget           429    insufficient_quota (a budget is spent; not retryable)
    ├─ Unavailable             503    service_unavailable (Redis down, no worker; retry_after)
    │  ├─ CircuitOpen          503    circuit_open (the deployment failed too often lately)
    │  └─ Overloaded           503    server_overloaded (refused at an API process's door: api/door.py)
    ├─ RequestTimeout          504    timeout (the job's deadline passed)
    └─ UpstreamError           502    upstream_error (status from the upstream; retryable
       │                              for 408/409/429/5xx/529 and transport failures)
       └─ UpstreamTimeout      504    upstream_timeout

Foreign exceptions are translated where they enter: the shared upstream client
(workers/providers/http.py) turns aiohttp's timeouts and connection errors into
`UpstreamTimeout` / `UpstreamError`, provider adapters turn upstream error
bodies into `UpstreamError`s, the API turns `msgspec.ValidationError` into
`InvalidRequest` and any Redis error a route lets through into `Unavailable`
(api/unavailable.py). A `Failed` reply crossing Redis
carries `ErrorInfo` and becomes the same class again on the API side, so an
error raised in a worker reaches the client with its status intact, and with the upstream's
`innererror` when an adapter kept one for the client (Azure's content-filter verdict).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
from msgspec import UNSET, UnsetType

from broker.ops.redaction import (
    redact as redact,  # adapters import it from here, where their errors are made
)


class ErrorInfo(msgspec.Struct, omit_defaults=True):
    """The serialisable form of a BrokerError (crosses Redis inside `Failed`)."""

    kind: str
    message: str
    status: int
    type: str
    code: str | None = None
    param: str | None = None
    retryable: bool = False
    retry_after_s: float | None = None
    innererror: dict[str, Any] | None = None


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None
    # The upstream's own detail the client needs to act on, under the name Azure OpenAI gives it
    # (a content filter's verdict per category); absent from every other error.
    innererror: dict[str, Any] | UnsetType = UNSET


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


class BrokerError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
        retryable: bool | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        innererror: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after_s = retry_after_s
        self.retryable = self.default_retryable if retryable is None else retryable
        # Extra response headers (x-ratelimit-*); edge-only, so not carried in ErrorInfo.
        self.headers = dict(headers or {})
        self.innererror = innererror
        if status is not None:
            self.status = status  # type: ignore[misc]  # instance override of the class default

    def to_info(self) -> ErrorInfo:
        return ErrorInfo(
            kind=type(self).__name__,
            message=self.message,
            status=self.status,
            type=self.type,
            code=self.code,
            param=self.param,
            retryable=self.retryable,
            retry_after_s=self.retry_after_s,
            innererror=self.innererror,
        )

    def to_body(self) -> ErrorEnvelope:
        return ErrorEnvelope(ErrorBody(self.message, self.type, self.param, self.code,
                                       UNSET if self.innererror is None else self.innererror))

    @staticmethod
    def from_info(info: ErrorInfo) -> BrokerError:
        cls = _BY_NAME.get(info.kind, BrokerError)
        err = cls(
            info.message,
            param=info.param,
            code=info.code,
            retry_after_s=info.retry_after_s,
            retryable=info.retryable,
            status=info.status,
            innererror=info.innererror,
        )
        return err


class InvalidRequest(BrokerError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(BrokerError):
    status = 401
    type = "invalid_request_error"  # OpenAI uses this type for 401s, not authentication_error
    default_code = "invalid_api_key"


class PermissionDenied(BrokerError):
    status = 403
    type = "invalid_request_error"
    default_code = "permission_denied"


class ModelNotFound(BrokerError):
    status = 404
    type = "invalid_request_error"
    default_code = "model_not_found"


class RateLimited(BrokerError):
    status = 429
    type = "requests"
    default_code = "rate_limit_exceeded"
    default_retryable = True


class TokensRateLimited(RateLimited):
    type = "tokens"


class OverBudget(RateLimited):
    """OpenAI's answer when the money runs out: 429 insufficient_quota, which the SDK does not retry."""

    type = "insufficient_quota"
    default_code = "insufficient_quota"
    default_retryable = False


class Unavailable(BrokerError):
    status = 503
    type = "service_unavailable_error"
    default_code = "service_unavailable"
    default_retryable = True


class CircuitOpen(Unavailable):
    default_code = "circuit_open"


class NotReplicated(Unavailable):
    """`redis.durability: replicated`: a job's queueing was not acknowledged by enough replicas in time,
    so it was withdrawn rather than accepted (broker/queue/durability.py)."""

    default_code = "not_replicated"


class Overloaded(Unavailable):
    """One API process holds all it may (`server.max_in_flight`, `server.max_new_per_s`,
    `server.shed_lag_ms`); another process, or this one a moment later, can serve the request."""

    default_code = "server_overloaded"

    @classmethod
    def in_flight(cls, retry_after_s: float) -> Overloaded:
        return cls("The server is handling as many requests as it can; please retry shortly.",
                   retry_after_s=retry_after_s)

    @classmethod
    def rate(cls, retry_after_s: float) -> Overloaded:
        return cls("The server is receiving new requests faster than it can start them; please retry shortly.",
                   retry_after_s=retry_after_s)

    @classmethod
    def lag(cls, retry_after_s: float) -> Overloaded:
        return cls("The server is too busy to take new requests right now; please retry shortly.",
                   retry_after_s=retry_after_s)


class RequestTimeout(BrokerError):
    status = 504
    type = "timeout_error"
    default_code = "timeout"


class UpstreamError(BrokerError):
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"
    # The status the upstream answered with (None: it never answered): failover reads it, the client
    # sees `status`. Worker-side only, so not carried in ErrorInfo.
    upstream_status: int | None = None

    @staticmethod
    def for_status(status: int, message: str, **kw: object) -> UpstreamError:
        """Map an upstream HTTP status to the status our client sees.

        Client errors the upstream blames on the request (400, 404, 413, 422)
        are the client's problem and keep their status; auth failures upstream
        are *our* misconfiguration, so the client gets 502, not a 401 that would
        make it doubt its own key.
        """
        retryable = status in (408, 409, 429) or status >= 500
        if status in (400, 404, 413, 422):
            mapped = status
        elif status == 429:
            mapped = 429
        elif status in (503, 529):
            mapped = 503
        elif status == 504:
            mapped = 504
        else:
            mapped = 502
        err = UpstreamError(message, status=mapped, retryable=retryable, **kw)  # type: ignore[arg-type]
        err.upstream_status = status
        return err


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    default_code = "upstream_timeout"
    default_retryable = True


def _family(cls: type[BrokerError]) -> list[type[BrokerError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _family(sub))]


# Every class above, by the name `ErrorInfo.kind` carries (a new one needs no list updated).
_BY_NAME: dict[str, type[BrokerError]] = {cls.__name__: cls for cls in _family(BrokerError)}
