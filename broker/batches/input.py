"""A batch input file, line by line: checked on upload, read again to run it.

The format: https://platform.openai.com/docs/api-reference/batch/request-input.

Each line is `{"custom_id", "method": "POST", "url", "body"}`; the body is decoded with the very
decoder the endpoint uses, so a line that would be a 400 live is refused at upload with its line
number, and every line of a file names the same endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from broker.errors import InvalidRequest
from broker.routing.capabilities import Request
from broker.wire import (
    chat_request_decoder,
    completion_request_decoder,
    embedding_request_decoder,
)

DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "/v1/chat/completions": chat_request_decoder,
    "/v1/completions": completion_request_decoder,
    "/v1/embeddings": embedding_request_decoder,
}
MAX_ERRORS_SHOWN = 5
MAX_LINE_BYTES = 16 * 1024 * 1024


class Line(msgspec.Struct, forbid_unknown_fields=True):
    custom_id: str
    method: str
    url: str
    body: msgspec.Raw


_line_decoder = msgspec.json.Decoder(Line)


def parse(raw: bytes) -> tuple[Line, Request]:
    """One line, checked; ValueError with what is wrong."""
    try:
        line = _line_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None
    if not line.custom_id or len(line.custom_id) > 512:
        raise ValueError("`custom_id` must be 1 to 512 characters")
    if line.method != "POST":
        raise ValueError(f"`method` must be POST, got {line.method!r}")
    decoder = DECODERS.get(line.url)
    if decoder is None:
        raise ValueError(f"`url` must be one of {', '.join(DECODERS)}, got {line.url!r}")
    try:
        body: Request = decoder.decode(line.body)
    except msgspec.DecodeError as exc:
        raise ValueError(f"invalid `body`: {exc}") from None
    return line, body


def lines(blocks: Iterable[bytes]) -> Iterator[tuple[int, bytes, int]]:
    """(1-based line number, line without its newline, byte offset just after it) of a JSONL body;
    blank lines are skipped but counted."""
    pending, offset, number = b"", 0, 0
    for block in blocks:
        pending += block
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            number += 1
            offset += len(raw) + 1
            if raw.strip():
                yield number, raw, offset
        if len(pending) > MAX_LINE_BYTES:
            raise InvalidRequest(f"Line {number + 1} is longer than {MAX_LINE_BYTES} bytes.", param="file")
    if pending.strip():
        yield number + 1, pending, offset + len(pending)


class Summary(msgspec.Struct):
    lines: int
    endpoint: str


def validate(blocks: Iterable[bytes], *, max_lines: int) -> Summary:
    """Check a whole input file (400 naming the first few bad lines), one line in memory at a time."""
    seen: set[str] = set()
    endpoint = ""
    errors: list[str] = []
    count = 0
    for number, raw, _ in lines(blocks):
        count += 1
        if count > max_lines:
            raise InvalidRequest(f"A batch file holds at most {max_lines} requests.", param="file",
                                 code="too_many_requests")
        try:
            line, _ = parse(raw)
            if line.custom_id in seen:
                raise ValueError(f"duplicate `custom_id` {line.custom_id!r}")
            if endpoint and line.url != endpoint:
                raise ValueError(f"every line must use the same `url`: {endpoint} before, {line.url} here")
            seen.add(line.custom_id)
            endpoint = line.url
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
            if len(errors) >= MAX_ERRORS_SHOWN:
                break
    if errors:
        raise InvalidRequest("The batch file is invalid: " + "; ".join(errors), param="file",
                             code="invalid_batch_file")
    if count == 0:
        raise InvalidRequest("The batch file holds no requests.", param="file", code="invalid_batch_file")
    return Summary(count, endpoint)
