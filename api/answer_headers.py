"""Headers added to an answer already built: the request id, the route, the x-ratelimit-* set.

Starlette's `response.headers.update(...)` goes through a MutableHeaders that scans the raw header list
for each name it sets; a job's answer gets a dozen such headers, none of them there yet (only an async
job's 202 may carry its id already), so they are appended as they are when none is.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response


def add(response: Response, headers: Mapping[str, str]) -> None:
    """`response.headers.update(headers)`, appending when none of `headers` is there yet."""
    names = {name.encode("latin-1") for name in headers}
    if any(name in names for name, _ in response.raw_headers):
        response.headers.update(headers)
    else:
        response.raw_headers.extend((name.encode("latin-1"), value.encode("latin-1"))
                                    for name, value in headers.items())
