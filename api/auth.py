"""Bearer key → tenant. Keys live in config only as sha256 hashes."""

from __future__ import annotations

import hashlib

from broker.config import ApiKey, Config, Tenant
from broker.errors import AuthenticationFailed


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

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization[:7].lower() == "bearer ":
            raise AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        key = authorization[7:].strip()
        principal = self._by_hash.get(hashlib.sha256(key.encode()).hexdigest())
        if principal is None:
            shown = f"{key[:3]}***{key[-2:]}" if len(key) > 8 else "***"
            raise AuthenticationFailed(f"Incorrect API key provided: {shown}.")
        return principal
