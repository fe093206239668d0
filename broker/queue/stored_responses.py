"""What a stored Responses API response holds in Redis, and its write: one shape for the API and the worker.

A response is stored with its whole context, so `previous_response_id` costs one read (api/responses_store.py
reads it). Key (broker/keys.py): `{ns}:response:{id}`, a hash: `t` tenant, `r` the Response JSON, `c` the
context items (a JSON array: the earlier turns', then its own input), `n` how many of them, at its end, are
its own input; a background response also has `j` its async job and `q` the Response its client got at
once, status `queued`. Written by response_keep.lua, fields and expiry in one command.

A completed response is written by the worker that answered it, in the pipeline that publishes its end,
before that end (broker/queue/outbox.py): its client cannot see it complete before it is readable, from
any API process, and it is kept even if that client has gone. A cache hit, which reaches no worker, and a
background response's queued form are written by the API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from broker.wire.responses import (
    AnyItem,
    FunctionCallOutputItem,
    MessageItem,
    ResponsesRequest,
    encoder,
)


def _with_id(item: AnyItem, fallback: str) -> AnyItem:
    """An input item as input_items lists it: with an id (pagination's `after` names one), minted from
    the response's if the client sent none."""
    if isinstance(item, MessageItem) and not isinstance(item.id, str):
        return msgspec.structs.replace(item, id=f"msg_{fallback}")
    if isinstance(item, FunctionCallOutputItem) and not isinstance(item.id, str):
        return msgspec.structs.replace(item, id=f"fco_{fallback}")
    return item


class _Input(msgspec.Struct):
    input: str | list[Any] | UnsetType = UNSET


_input_of = msgspec.json.Decoder(_Input)


def own_items(body: bytes) -> list[AnyItem]:
    """A Responses request's own input items, read from its body without the rest of it (its tools'
    schemas, its text format...): what a worker keeping its response needs of it."""
    return ResponsesRequest(model="", input=_input_of.decode(body).input).items()


def context(response_id: str, items: Sequence[AnyItem], earlier: Sequence[AnyItem] | bytes) -> tuple[bytes, int]:
    """The `c` and `n` fields: the earlier turns' items (as Structs, or already a JSON array), then the
    request's own input `items`, each with an id."""
    suffix = response_id.removeprefix("resp_")
    own = [_with_id(item, f"{suffix}_in{i}") for i, item in enumerate(items)]
    if not isinstance(earlier, bytes):
        return encoder.encode([*earlier, *own]), len(own)
    mine = encoder.encode(own)
    if earlier in (b"", b"[]") or not own:
        return (mine if earlier in (b"", b"[]") else earlier), len(own)
    return earlier[:-1] + b"," + mine[1:], len(own)  # two JSON arrays joined, neither decoded


def keep_args(ttl_s: int, tenant: str, context_json: bytes, own: int, *, response: bytes | None = None,
              job: str | None = None, queued: bytes | None = None) -> list[Any]:
    """response_keep.lua's ARGV: a completed `response`, or a background one's `job` and `queued` form."""
    fields: list[Any] = ["t", tenant, "c", context_json, "n", own]
    if response is not None:
        fields += ["r", response]
    if job is not None:
        fields += ["j", job, "q", queued or b""]
    return [ttl_s, *fields]


def completed_response(body: bytes, *, streamed: bool) -> bytes:
    """The Response in a job's final body: the body itself, or a stream's last event's `response`."""
    if not streamed:
        return body
    data = body[body.rindex(b"\ndata: ") + 7:].strip()
    return bytes(msgspec.json.decode(data, type=dict[str, msgspec.Raw])["response"])
