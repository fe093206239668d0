"""Request bodies → wire Structs, with msgspec's error path as the OpenAI `param`."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from broker.errors import InvalidRequest

T = TypeVar("T")

_AT_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")
_LEADING_FIELD = re.compile(r"^`(?P<field>[^`]+)`")  # our own __post_init__ checks name the field first


def decode_body(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        return decoder.decode(body)
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
