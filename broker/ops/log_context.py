"""Which request a log line is about: our request id (`req_<job id>`) and the client's own
`X-Client-Request-Id`, so an operator can find a client's complaint in the logs by either.

The API binds them while it serves a request, a worker while it runs a job. asyncio copies the
context into each task it creates, and every request and every job runs in a task of its own,
so a binding never leaks into another request's lines. `RequestIdsFilter` puts them on every
record (`request_id`, `client_request_id`, and `request_ids`, the text the default format ends
lines with); a line about no request gets empty values.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

import msgspec

_bound: ContextVar[tuple[str, str]] = ContextVar("llm_broker_request_ids", default=("", ""))


def bind(request_id: str, client_request_id: str = "") -> None:
    _bound.set((request_id, client_request_id))


def request_id() -> str:
    """Our id of the request being served here, "" outside one."""
    return _bound.get()[0]


class RequestIdsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ours, theirs = _bound.get()
        record.request_id, record.client_request_id = ours, theirs
        record.request_ids = (f" [{ours}" + (f" client {theirs}" if theirs else "") + "]") if ours or theirs else ""
        fields = getattr(record, "fields", None)
        record.fields_text = fields_text(fields) if fields else ""
        return True


# The command line's log format (broker/cli/main.py): the ids close the line.
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(fields_text)s%(request_ids)s"
# The level and format `llm-broker api` passes to its uvicorn processes, which start without our
# logging set up.
LEVEL_ENV = "LLM_BROKER_LOG_LEVEL"
FORMAT_ENV = "LLM_BROKER_LOG_FORMAT"
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request ids, and the record's
    structured `fields` (the per-request and per-job lines: api/metrics.py, workers/loop.py)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
                                "message": record.getMessage()}
        for name in ("request_id", "client_request_id"):
            if value := getattr(record, name, ""):
                line[name] = value
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


_encoder = msgspec.json.Encoder()


def fields_text(fields: dict[str, Any]) -> str:
    """The text format's rendering of a line's structured fields: ` key=value ...`."""
    return "".join(f" {k}={v}" for k, v in fields.items() if v is not None and v != "")


def configure(level: str, fmt: str = "text") -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdsFilter())
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
