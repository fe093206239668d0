"""The Lua scripts in broker/store/lua/: the steps that must be atomic in Redis live there, one file each.

Scripts that ride in a pipeline are queued as EVALSHA by hand (`evalsha_into`):
redis-py's own pipeline scripts cost a SCRIPT EXISTS round trip on every
execute, and a plain EVAL ships the whole body on every request. Each process
loads its scripts at start (`QueueScripts.load`, `Limiter.load`); a Redis that
restarted without them answers NOSCRIPT to those commands only, and
`resend_unknown` runs just those again through the script object, which loads
itself.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, NamedTuple

from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError


def lua_script(name: str) -> str:
    return resources.files("broker.store").joinpath(f"lua/{name}.lua").read_text()


# The server clock as the parts read it; in a composed script, read once for them all. A script runs
# atomically (Redis even stops the clock for key expiry while one runs), so its parts are at one instant.
_TIME = "redis.call('TIME')"
_SHARED_TIME = ("local clock\nlocal function server_time()\n  clock = clock or " + _TIME + "\n  return clock\nend\n")


def composed(main: str, *parts: str) -> str:
    """One script made of several: each of `parts` wrapped as a local function of its own KEYS and ARGV
    (named as its file), then `main`, which calls them. Each part stays the one file it runs from alone;
    their reads of the server's TIME become one."""
    bodies = {part: lua_script(part).replace(_TIME, "server_time()") for part in parts}
    return (_SHARED_TIME + "".join(f"local function {part}(KEYS, ARGV)\n{body}\nend\n" for part, body in bodies.items())
            + lua_script(main))


class Queued(NamedTuple):
    """A script call queued in a pipeline, kept so it can be sent again after a NOSCRIPT."""

    position: int
    script: AsyncScript
    keys: list[Any]
    args: list[Any]


def evalsha_into(pipe: Pipeline, script: AsyncScript, keys: list[Any], args: list[Any]) -> Queued:
    # As a raw command: redis-py's cluster pipeline refuses its `evalsha` method, yet routes a raw
    # EVALSHA to the node of its keys' slot.
    queued = Queued(len(pipe), script, keys, args)
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    return queued


def publish_into(pipe: Pipeline, channel: str, message: bytes) -> None:
    """PUBLISH in a pipeline, as a raw command for the same reason: a cluster pipeline sends it to the
    node of the channel's slot, so one channel's messages keep their order."""
    pipe.execute_command("PUBLISH", channel, message)


async def resend_unknown(queued: list[Queued], results: list[Any]) -> None:
    """Run again, in pipeline order, the queued calls Redis answered with NOSCRIPT; their replies
    take the errors' places in `results`."""
    for call in queued:
        if isinstance(results[call.position], NoScriptError):
            results[call.position] = await call.script(keys=call.keys, args=call.args)
