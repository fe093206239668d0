"""Each inbound protocol's way of writing a stream, by the name its payload gives (broker/queue/payloads.py)."""

from __future__ import annotations

from api import anthropic, sse

DIALECTS: dict[str, sse.Dialect] = {"openai": sse.OPENAI, "anthropic": anthropic.STREAM}


def dialect(name: str) -> sse.Dialect:
    """A stream's dialect; an unknown name (a job from a newer release) is written as OpenAI's."""
    return DIALECTS.get(name, sse.OPENAI)
