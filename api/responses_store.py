"""Stored responses of the Responses API: kept when one completes, read by id for its own tenant.

`store` is on by default, as at OpenAI (https://platform.openai.com/docs/api-reference/responses/create).
A response is written once, before its client sees it complete (by the worker that answered it, with
its reply), with its whole context: the earlier turns' items and its own input. So `previous_response_id`
costs one read, from any API process, the moment the previous response is done, and a chain never walks
back turn by turn. Another tenant's id reads as absent: the client gets the 404 an unknown id gets.

What the key holds, and its write: broker/queue/stored_responses.py.
"""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from broker.config import ResponsesSettings
from broker.errors import ModelNotFound
from broker.keys import Keys
from broker.queue import stored_responses
from broker.wire.responses import AnyItem, ResponsesRequest, decode_items


class _Output(msgspec.Struct):
    output: msgspec.Raw = msgspec.Raw(b"[]")  # a Response's output items are input items of the next turn


_output_of = msgspec.json.Decoder(_Output)


class Stored(msgspec.Struct, frozen=True):
    response: bytes | None  # the Response JSON, as its client got it; None: a background one not done yet
    context: list[AnyItem]  # earlier turns' items, then its own input items
    own: int  # how many items at the end of `context` are its own input
    job: str | None = None  # a background response's async job (broker/queue/async_jobs.py)
    queued: bytes | None = None  # and the Response its client got at once, status `queued`

    def history(self) -> list[AnyItem]:
        """What a request continuing from this response starts with: its context, then its output."""
        return [*self.context, *(decode_items(_output_of.decode(self.response).output) if self.response else ())]

    def input_items(self) -> list[AnyItem]:
        return self.context[len(self.context) - self.own:]


def not_found(response_id: str, param: str | None = None) -> ModelNotFound:
    return ModelNotFound(f"No response found with id '{response_id}'.", param=param,
                         code="previous_response_not_found" if param else "not_found")


async def load(redis: Redis, keys: Keys, tenant: str, response_id: str) -> Stored | None:
    """The stored response `response_id` of `tenant`; None if there is none (or it is another tenant's)."""
    found: list[bytes | None] = await redis.hmget(keys.response(response_id),  # type: ignore[misc]
                                                  ["t", "r", "c", "n", "j", "q"])
    owner, response, context, own, job, queued = found
    if owner is None or owner.decode() != tenant or (response is None and job is None):
        return None
    return Stored(response, decode_items(context or b"[]"), int(own or 0), job.decode() if job else None, queued)


async def history(redis: Redis, keys: Keys, tenant: str, request: ResponsesRequest) -> list[AnyItem]:
    """The items of the turns before a request (`previous_response_id`); 404 when that id is not found."""
    previous = request.previous_response_id
    if not isinstance(previous, str):
        return []
    stored = await load(redis, keys, tenant, previous)
    if stored is None or stored.response is None:  # a background response not done is not a turn yet
        raise not_found(previous, "previous_response_id")
    return stored.history()


async def save(keep: AsyncScript, keys: Keys, settings: ResponsesSettings, tenant: str, response_id: str,
               request: ResponsesRequest, earlier: list[AnyItem], response: bytes, *, job: str | None = None) -> None:
    """Keep a response the API answered itself (a cache hit; a completed one is kept by its worker:
    broker/queue/stored_responses.py), unless its request said `store: false`, or, for `background`,
    the queued one its client got, with the job that will complete it. `keep` is response_keep.lua."""
    if request.store is False and job is None:
        return
    context, own = stored_responses.context(response_id, request.items(), earlier)
    args = (stored_responses.keep_args(settings.store_ttl_s, tenant, context, own, job=job, queued=response)
            if job is not None else stored_responses.keep_args(settings.store_ttl_s, tenant, context, own,
                                                               response=response))
    await keep(keys=[keys.response(response_id)], args=args)


async def complete(redis: Redis, keys: Keys, response_id: str, response: bytes) -> None:
    """A background response's answer, kept once its job is done (read then, by whoever asks first)."""
    await redis.hset(keys.response(response_id), mapping={"r": response})  # type: ignore[misc]


async def delete(redis: Redis, keys: Keys, tenant: str, response_id: str) -> bool:
    if await load(redis, keys, tenant, response_id) is None:
        return False
    return bool(await redis.delete(keys.response(response_id)))
