"""The provider seam: what a worker needs from an upstream, and nothing more.

An adapter receives the client's OpenAI-shaped request (already validated) and
the upstream model id, and returns OpenAI-shaped results. Translation to and
from the upstream's own protocol lives in the adapter's module as pure
functions; the adapter wires an HTTP client to them. Adapters raise only
`broker.errors.BrokerError`s (mostly `UpstreamError`), translated where the
foreign exception enters, so the worker loop never sees an httpx exception.

The worker owns identity: it rewrites `id`, `model` and `created` on whatever
the adapter returns, so adapters need not care what the client will see.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar, Protocol

import msgspec

from broker.wire import ChatChunk, ChatCompletion, ChatRequest


class Capabilities(msgspec.Struct, frozen=True):
    tools: bool = True
    vision: bool = True
    json_schema: bool = True
    stream_usage: bool = True  # streams end with a usage chunk


class Provider(Protocol):
    capabilities: ClassVar[Capabilities]

    async def complete(self, req: ChatRequest, *, model: str, deadline: float) -> ChatCompletion:
        """One non-streaming completion. `deadline` is unix seconds."""
        ...

    def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        """Chunks in order; a usage chunk (no choices) last when the upstream reports usage."""
        ...

    async def aclose(self) -> None: ...
