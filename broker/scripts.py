"""The Lua scripts in broker/lua/: the steps that must be atomic in Redis live there, one file each."""

from __future__ import annotations

from importlib import resources


def lua_script(name: str) -> str:
    return resources.files("broker").joinpath(f"lua/{name}.lua").read_text()
