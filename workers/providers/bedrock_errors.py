"""Bedrock's errors → the broker's, for HTTP answers and for exception events inside a stream.

AWS names the error in the `x-amzn-ErrorType` header (`ThrottlingException:http://internal.amazon.com/...`;
botocore reads the part before the colon) and explains it in the JSON body's `message`. A stream that has
begun reports an error as a frame whose `:message-type` is `exception` and whose `:exception-type` names it
in lowerCamelCase (https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html,
"Errors"). Either way the type decides, not only the status: a ModelNotReadyException is a 429 that
another deployment may serve at once, and signature and token errors are our misconfiguration.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from broker.errors import UpstreamError, redact
from workers.providers.bedrock_wire import error_decoder

# Our credentials refused: 502 to the client and no retry here (a retry meets the same keys), though
# failover may try a deployment that holds others (broker/routing/failover.py reads the 403).
AUTH_ERRORS = frozenset({"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
                         "ExpiredTokenException", "MissingAuthenticationTokenException",
                         "IncompleteSignatureException", "SignatureDoesNotMatch"})
# Transient whatever their status: the model or the service will take the same request again.
_RETRYABLE = {"ModelNotReadyException": 429, "ServiceQuotaExceededException": 429, "ThrottlingException": 429,
              "ServiceUnavailableException": 503, "InternalServerException": 500, "ModelTimeoutException": 408,
              "ModelErrorException": 500, "ModelStreamErrorException": 500}


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    kind = (headers.get("x-amzn-errortype") or "").split(":", 1)[0]
    try:
        message = error_decoder.decode(body).text()
    except msgspec.DecodeError:
        message = ""  # not JSON (a proxy's page): the status and type must do
    return error_of(kind or f"HTTP {status}", message, status, _retry_after(headers))


def exception_event(kind: str, payload: bytes) -> UpstreamError:
    """An exception frame of a stream (`throttlingException`, ...), or an `error` frame's code."""
    try:
        message = error_decoder.decode(payload).text() if payload else ""
    except msgspec.DecodeError:
        message = ""
    name = kind[:1].upper() + kind[1:]
    return error_of(name, message, _RETRYABLE.get(name, 400 if name == "ValidationException" else 500), None)


def error_of(kind: str, message: str, status: int, retry_after_s: float | None) -> UpstreamError:
    if kind in AUTH_ERRORS:
        status = 403
        # AWS explains a signature mismatch with the canonical request it expected, which holds our
        # signed headers (the session token among them): only the first paragraph leaves.
        message = message.split("\n\n", 1)[0]
    elif kind in _RETRYABLE and status < 500 and status != 429:
        status = _RETRYABLE[kind]
    text = f"Bedrock error ({status} {kind}): {redact(message) or 'no message'}"
    err = UpstreamError.for_status(status, text, code="rate_limit_exceeded" if status == 429 else None,
                                   retry_after_s=retry_after_s)
    if kind in _RETRYABLE:
        err.retryable = True
    return err


def _retry_after(headers: Mapping[str, str]) -> float | None:
    # Bedrock itself sends none; a proxy in front of it may.
    try:
        value = headers.get("retry-after")
        return float(value) if value is not None else None
    except ValueError:
        return None
