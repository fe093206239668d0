"""Bearer key → tenant, or → the admin. Keys are kept only as sha256 hashes: in config, and in
Redis for keys made at run time (`live`, kept current by api/live_keys.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from broker.config import ApiKey, Config, Tenant
from broker.errors import AuthenticationFailed, PermissionDenied


class Principal:
    __slots__ = ("tenant_name", "tenant", "key_name", "key")

    def __init__(self, tenant_name: str, tenant: Tenant, key_name: str, key: ApiKey | None = None) -> None:
        self.tenant_name = tenant_name
        self.tenant = tenant
        self.key_name = key_name  # never the key itself: its name, or the first hex digits of its hash
        # Its own limits and budgets, if it has any, whether it is in config or made at run time (Redis).
        self.key = key


class Authenticator:
    def __init__(self, config: Config) -> None:
        self._by_hash: dict[str, Principal] = {}
        for name, tenant in config.tenants.items():
            for key in tenant.api_keys():
                self._by_hash[key.key.removeprefix("sha256:")] = Principal(name, tenant, key.name,
                                                                              tenant.api_key(key.name))
        # Keys made at run time, by hash; replaced whole (never mutated) by api/live_keys.py.
        self.live: dict[str, Principal] = {}
        self._admin = None if config.admin is None else {k.removeprefix("sha256:") for k in config.admin.keys}

    def authenticate(self, authorization: str | None) -> Principal:
        digest = _digest(authorization)
        principal = self._by_hash.get(digest) or self.live.get(digest)
        if principal is None:
            raise _incorrect(authorization)
        return principal

    def admin(self, authorization: str | None) -> None:
        """Pass only the admin key (config `admin.keys`): 403 when none is configured, or for a tenant's key."""
        if self._admin is None:
            raise PermissionDenied("The admin API is off: configure `admin.keys` to use it.", code="admin_disabled")
        digest = _digest(authorization)
        if digest in self._admin:
            return
        if digest in self._by_hash or digest in self.live:
            raise PermissionDenied("This key may not use the admin API: it needs the admin key.")
        raise _incorrect(authorization)


def credentials(headers: Mapping[str, str]) -> str | None:
    """The client's key as an `Authorization` value: that header, or Anthropic's `x-api-key` (its SDK
    and Claude Code send the key there: https://docs.anthropic.com/en/api/overview#authentication)."""
    if (authorization := headers.get("authorization")) is not None:
        return authorization
    key = headers.get("x-api-key")
    return f"Bearer {key}" if key else None


def _digest(authorization: str | None) -> str:
    if not authorization or not authorization[:7].lower() == "bearer ":
        raise AuthenticationFailed(
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    return hashlib.sha256(authorization[7:].strip().encode()).hexdigest()


def _incorrect(authorization: str | None) -> AuthenticationFailed:
    key = (authorization or "")[7:].strip()
    shown = f"{key[:3]}***{key[-2:]}" if len(key) > 8 else "***"
    return AuthenticationFailed(f"Incorrect API key provided: {shown}.")
