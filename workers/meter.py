"""A job's tally: what its deployment charges, the usage the provider reported, the output seen.

The job's Meter prices the reported usage (`usage.cost`, broker/money/pricing.py) and counts the
output that went by, so a stream without usage, cut off or cancelled, can still be charged for
what was sent.
"""

from __future__ import annotations

import msgspec

from broker.money.pricing import Price, usd
from broker.wire import ChatChunk, ChatCompletion, ChunkChoice, TextCompletion, Usage


class Meter:
    """One job's tally: its deployment's price, the usage the provider reported, the output seen."""

    __slots__ = ("price", "usage", "output_chars", "responded")

    def __init__(self, price: Price | None) -> None:
        self.price = price
        self.usage: Usage | None = None
        self.output_chars = 0
        self.responded = False  # the upstream began answering: the prompt was read (and is billed)

    def stamp(self, usage: Usage) -> Usage:
        """Record the provider's usage and put its cost on it (unpriced: none, never 0)."""
        self.usage = usage
        usage.cost = usd(self.price.cost_nanos(usage)) if self.price is not None else msgspec.UNSET
        return usage

    def answered(self, result: ChatCompletion) -> Usage | None:
        """A whole chat answer: its usage stamped, or, unreported, its output counted."""
        self.responded = True
        if result.usage is not None:
            return self.stamp(result.usage)
        self.output_chars += sum(len(c.message.content or "") for c in result.choices)
        return None

    def saw(self, chunk: ChatChunk | TextCompletion) -> None:
        self.responded = True
        for choice in chunk.choices:
            if isinstance(choice, ChunkChoice):
                delta = choice.delta
                if isinstance(delta.content, str):
                    self.output_chars += len(delta.content)
                for call in delta.tool_calls or ():
                    if call.function and isinstance(call.function.arguments, str):
                        self.output_chars += len(call.function.arguments)
            else:
                self.output_chars += len(choice.text)
