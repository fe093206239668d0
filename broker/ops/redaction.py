"""What must never leave the broker: our upstream credentials.

Upstreams sometimes echo the key they were sent ("Incorrect API key provided:
sk-..."), in a 401, a 400 or a mid-stream error event. That key is ours, not
the client's, so `redact` removes it from every string that leaves a worker
(the reply path runs every error message through it: broker/queue/outbox.py) and
from every log record of the process (`install` wraps the log record factory,
so uvicorn's loggers and tracebacks are covered too).

Two passes: every configured secret literally (provider `api_key`s and header
values, also URL- and JSON-escaped, as an upstream may quote them), then a
pattern for anything credential-shaped that no config names (`sk-...`,
`Bearer ...`, `key=...`), keys with `+`, `/` and `=` included.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

import msgspec

from broker.config.types import Secret

if TYPE_CHECKING:
    from broker.config import Config

MASK = "***"
# Header values shorter than this are flags and names ("1", "my-app"), not credentials.
MIN_SECRET_LEN = 8

_PATTERN = re.compile(r"(sk-|Bearer\s+|key[=:]\s*)[A-Za-z0-9_\-.+/=]{6,}", re.IGNORECASE)
_known: re.Pattern[str] | None = None


def secrets_of(config: Config) -> list[str]:
    """Every upstream credential the config holds: its secrets (api keys, AWS secret keys and session tokens,
    bearer tokens, client secrets, in nested settings too), and header values long enough to be one."""
    found: list[str] = []
    for provider in config.providers.values():
        found += _secrets_in(provider)
        found += [value for value in getattr(provider, "headers", {}).values() if len(value) >= MIN_SECRET_LEN]
    if config.batches.s3 is not None:  # the Batch API's file store
        found += config.batches.s3.secrets()
    return found


def _secrets_in(settings: Any) -> list[str]:
    """The `Secret`s (broker/config/types.py: they have `reveal`) among a settings Struct's fields, nested ones too."""
    found: list[str] = []
    for name in getattr(settings, "__struct_fields__", ()):
        value = getattr(settings, name)
        if callable(getattr(value, "reveal", None)):
            if value:
                found.append(value.reveal())
        elif hasattr(value, "__struct_fields__"):
            found += _secrets_in(value)
    return found


def _variants(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}


_remembered: set[str] = set()


def remember(secrets: Iterable[str]) -> None:
    """Redact these literally from now on (as well as those remembered before)."""
    global _known
    _remembered.update(v for s in secrets if s for v in _variants(s))
    if _remembered:
        # Longest first: a secret that contains another is removed whole.
        _known = re.compile("|".join(re.escape(s) for s in sorted(_remembered, key=len, reverse=True)))


def redact(text: str) -> str:
    """`text` without any upstream credential in it."""
    if _known is not None:
        text = _known.sub(MASK, text)
    return _PATTERN.sub(lambda m: m.group(1) + MASK, text)


def install(config: Config) -> None:
    """Remember the config's secrets and redact every log record this process makes."""
    remember(secrets_of(config))
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacting", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatted now, redacted, and cached where formatters look for it first.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    redacting_factory.redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)
