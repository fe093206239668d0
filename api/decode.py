"""Request bodies → wire Structs, with msgspec's error path as the OpenAI `param`; size-capped reads."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from starlette.requests import Request

from broker.errors import InvalidRequest

T = TypeVar("T")

_AT_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")
_LEADING_FIELD = re.compile(r"^`(?P<field>[^`]+)`")  # our own __post_init__ checks name the field first


def _too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(f"The request body is larger than this server accepts ({limit:,} bytes).",
                          status=413, code="request_too_large")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with a 413 as soon as it is known to exceed `limit` bytes.

    Content-Length is checked first; a chunked body is counted as it arrives, so
    an oversized one is never held in memory whole.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        parts.append(part)
    return b"".join(parts)


_raw_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _with_extras(payload: T, body: bytes) -> T:
    """Fields the Struct does not model, kept in its `extra_body` (if it has one) as sent.

    A second pass over the body, but a shallow one: values stay undecoded bytes
    unless they are extras.
    """
    known = getattr(type(payload), "__struct_fields__", ())
    if "extra_body" not in known:
        return payload
    extras = {name: msgspec.json.decode(raw) for name, raw in _raw_fields.decode(body).items() if name not in known}
    if not extras:
        return payload
    sent = getattr(payload, "extra_body")
    merged = {**sent, **extras} if isinstance(sent, dict) else extras
    return msgspec.structs.replace(payload, extra_body=merged)  # type: ignore[type-var]


def decode_body(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        return _with_extras(decoder.decode(body), body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _AT_PATH.search(text)
        path = match.group("path") if match else ""
        missing = _MISSING.search(text)
        leading = _LEADING_FIELD.match(text)
        if missing:
            path = f"{path}.{missing.group('field')}" if path else missing.group("field")
        elif leading and not path:
            path = leading.group("field")
        message = text[: match.start()] if match else text
        where = f" (at `{path}`)" if path else ""
        raise InvalidRequest(f"Invalid request body: {message}{where}.", param=path or None) from None
    except msgspec.DecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The request body must be valid JSON."
        ) from None
