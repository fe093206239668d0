"""Config spellings of earlier releases, still read: rewritten to today's before decoding.

`kind: openai` with `profile: azure` was Azure OpenAI before it had a kind of its own
(`kind: azure`, broker/config/providers.py). A running deployment's config keeps working
across the upgrade; the log says once what to write instead.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def migrate(raw: Any) -> Any:
    """`raw` (the YAML, `${ENV}` expanded) with every old spelling rewritten; the same object if none."""
    providers = raw.get("providers") if isinstance(raw, dict) else None
    if not isinstance(providers, dict):
        return raw
    rewritten = {name: _azure_profile(name, entry) for name, entry in providers.items()}
    if all(rewritten[name] is entry for name, entry in providers.items()):
        return raw
    return {**raw, "providers": rewritten}


def _azure_profile(name: str, entry: Any) -> Any:
    if not (isinstance(entry, dict) and entry.get("kind") == "openai" and entry.get("profile") == "azure"):
        return entry
    moved = {key: value for key, value in entry.items() if key not in ("kind", "profile", "base_url")}
    moved["kind"] = "azure"
    if "base_url" in entry:
        moved["endpoint"] = entry["base_url"]
    # The profile had no default: a config without api_version was refused; the kind's own default
    # (v1) would silently change its URLs, so an absent one stays absent and is refused by name.
    moved.setdefault("api_version", None)
    log.warning("provider %r: `kind: openai` with `profile: azure` is now `kind: azure` (`base_url` is "
                "`endpoint`); read as such, please update the config", name)
    return moved
