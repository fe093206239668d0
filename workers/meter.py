"""A job's tally: what its deployment charges, the usage the provider reported, the output seen.

The job's Meter prices the reported usage (`usage.cost`, broker/money/pricing.py) and counts the
output that went by, so a stream without usage, cut off or cancelled, can still be charged for
what was sent.
"""

from __future__ import annotations

import msgspec

from broker.money.pricing import Charge, Price, usd
from broker.wire import ChatChunk, ChatCompletion, ChunkChoice, TextCompletion, Usage


class Meter:
    """One job's tally: its deployment's price, the usage the provider reported, the output seen."""

    __slots__ = ("price", "usage", "output_chars", "responded", "billed")

    def __init__(self, price: Price | None) -> None:
        self.price = price
        self.usage: Usage | None = None
        self.output_chars = 0
        self.responded = False  # the upstream began answering: the prompt was read (and is billed)
        # A media job's charge, priced by its own units (images, audio seconds, characters) rather than by
        # tokens (broker/money/pricing.py): (nano-dollars or None if unpriced, estimated?). None: by tokens.
        self.billed: tuple[int | None, bool] | None = None

    def stamp(self, usage: Usage) -> Usage:
        """Record the provider's usage and put its cost on it (unpriced: none, never 0)."""
        self.usage = usage
        usage.cost = usd(self.price.cost_nanos(usage)) if self.price is not None else msgspec.UNSET
        return usage

    def bill(self, usage: Usage, nanos: int | None, *, estimated: bool = False) -> Usage:
        """Record a media job's usage and its cost in its own units (`nanos`, None: unpriced)."""
        self.usage, self.billed, self.responded = usage, (nanos, estimated), True
        usage.cost = usd(nanos) if nanos is not None else msgspec.UNSET
        return usage

    def settle(self, charge: Charge) -> Charge:
        """The job's charge as the ledger records it: a media job's own cost in place of its tokens'."""
        if self.billed is None:
            return charge
        nanos, estimated = self.billed
        return msgspec.structs.replace(charge, cost_nanos=nanos, estimated=estimated)

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
