"""Building blocks of config Structs (kept apart so provider settings and config can share them)."""

from __future__ import annotations

import msgspec


class Secret(str):
    """A string that never shows itself in a repr or a traceback."""

    def __repr__(self) -> str:
        return "Secret('***')"

    def reveal(self) -> str:
        return str.__str__(self)


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for config Structs: unknown fields are typos, so they are errors."""
