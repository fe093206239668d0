"""The Sentinel URL: `redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`.

The password is the data nodes'; sentinels get one only from `?sentinel_password=` (a sentinel
without `requirepass` refuses AUTH). `?socket_timeout=` (seconds) is the sentinels' alone (see
broker/store/sentinel.py). Kept apart from the connection so config checks can parse a URL
without importing redis.

Errors name what is wrong and never repeat the URL: it may hold a password.
"""

from __future__ import annotations

import math
from urllib.parse import unquote

import msgspec

from broker.config.types import Secret

SCHEME = "redis+sentinel://"
DEFAULT_PORT = 26379  # Sentinel's own default port
QUERY_OPTIONS = ("sentinel_password", "socket_timeout")


class SentinelURL(msgspec.Struct, frozen=True, kw_only=True):
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: Secret | None = None
    sentinel_password: Secret | None = None
    socket_timeout_s: float | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    if not url.startswith(SCHEME):
        raise ValueError(f"a Sentinel URL starts with {SCHEME}")
    rest, _, query = url[len(SCHEME):].partition("?")
    if "#" in query or "#" in rest:
        raise ValueError("a Sentinel URL has no #fragment")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = Secret(unquote(secret)) if colon and secret else None
    sentinels = tuple(_address(part, i, hosts.count(",") + 1) for i, part in enumerate(hosts.split(",")))
    service, db = _service_and_db(path if slash else "")
    options = _query(query)
    timeout = options.get("socket_timeout")
    return SentinelURL(
        sentinels=sentinels, service=service, db=db, username=username, password=password,
        sentinel_password=Secret(options["sentinel_password"]) if options.get("sentinel_password") else None,
        socket_timeout_s=_seconds(timeout) if timeout is not None else None)


def _address(part: str, index: int, count: int) -> tuple[str, int]:
    # Only positions in these messages: a host part could be a password that lost its '@'.
    which = f"sentinel address {index + 1} of {count}"
    if part.startswith("["):  # [IPv6]:port
        host, bracket, port = part[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"{which}: an IPv6 address is written [addr]:port")
        port = port[1:]
    else:
        host, _, port = part.partition(":")
    if not host:
        raise ValueError(f"{which}: no host (write host:port, several separated by ',')")
    if not port:
        return host, DEFAULT_PORT
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{which}: the port must be a number from 1 to 65535")
    return host, int(port)


def _service_and_db(path: str) -> tuple[str, int]:
    service, _, db = path.partition("/")
    if not service:
        raise ValueError("no service name: the path names the primary Sentinel monitors, as in /mymaster")
    if "/" in db or (db and not (db.isascii() and db.isdigit())):
        raise ValueError("after the service name only a database number may follow, as in /mymaster/0")
    return unquote(service), int(db or 0)


def _query(query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        # Not parse_qsl: it reads '+' as a space, and a password may hold a '+'.
        name, _, value = (unquote(part) for part in pair.partition("="))
        if name not in QUERY_OPTIONS:
            raise ValueError(f"unknown option {name!r} (known: {', '.join(QUERY_OPTIONS)})")
        if name in options:
            raise ValueError(f"option {name!r} is given twice")
        options[name] = value
    return options


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError("socket_timeout is a number of seconds above 0")
    return seconds
