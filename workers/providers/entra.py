"""Microsoft Entra ID bearer tokens by the OAuth2 client-credentials grant, cached per worker process.

One form POST to the tenant's token endpoint
(https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow) gives
`{token_type, expires_in, access_token}`; azure-identity would be a dependency for these few lines.

- A token is reused until it nears its end: a refresh starts at half its life or five minutes
  before it expires, whichever is later (Entra tokens live 60 to 90 minutes), and the current
  token keeps serving while the refresh runs or if it fails, until shortly before it expires.
- One refresh at a time: the requests that need a token while it runs all await the same task
  (shielded, so a request that is cancelled does not cancel it for the others).
- A failed refresh is remembered for a second: a misconfigured secret must not turn every request
  into a call to the token endpoint.
- Failures become `UpstreamError`s that say what the endpoint answered (`invalid_client`,
  `AADSTS7000215`) and never carry the secret or a token. A refused credential is our
  misconfiguration: upstream status 401 (the client gets 502 and the job fails over, as for a
  wrong key).
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlencode

import msgspec

from broker.config.providers import EntraAuth
from broker.errors import UpstreamError, redact
from workers.providers.http import UpstreamHTTP

_FORM = {"content-type": "application/x-www-form-urlencoded", "accept": "application/json"}
REFRESH_BEFORE_S = 300.0  # start refreshing this long before the token expires (or at half-life)
FAILURE_MEMORY_S = 1.0


class TokenResponse(msgspec.Struct):
    access_token: str
    expires_in: int | str  # seconds; Entra's v1 endpoint sent a string
    token_type: str = "Bearer"


class TokenError(msgspec.Struct):
    error: str = ""
    error_description: str = ""


_token = msgspec.json.Decoder(TokenResponse)
_error = msgspec.json.Decoder(TokenError)


class ClientCredentials:
    def __init__(self, name: str, auth: EntraAuth, *, timeout_s: float, connect_timeout_s: float) -> None:
        self.name = name
        self._http = UpstreamHTTP(f"{name} (Entra ID token endpoint)", auth.endpoint(), headers={},
                                  max_connections=2, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
        self._timeout_s = min(timeout_s, 60.0)
        self._secret = auth.client_secret.reveal()
        self._form = urlencode({"grant_type": "client_credentials", "client_id": auth.client_id,
                                "client_secret": self._secret, "scope": auth.scope}).encode()
        self._token: str | None = None
        self._refresh_at = self._expires_at = 0.0  # time.monotonic()
        self._refreshing: asyncio.Task[str] | None = None
        self._failed: tuple[float, UpstreamError] | None = None

    async def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {await self.token()}"}

    async def token(self) -> str:
        now = time.monotonic()
        if self._token is not None and now < self._refresh_at:
            return self._token
        usable = self._token if self._token is not None and now < self._expires_at else None
        if self._failed is not None and now < self._failed[0]:
            if usable is not None:
                return usable
            raise _again(self._failed[1])
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._refresh())
            self._refreshing.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(self._refreshing)
        except UpstreamError as exc:
            if usable is not None:
                return usable
            raise _again(exc) from None

    async def _refresh(self) -> str:
        try:
            started = time.monotonic()
            async with self._http.post("", self._form, deadline=time.time() + self._timeout_s, headers=_FORM) as resp:
                body = await resp.read()
            if resp.status != 200:
                raise self._refused(resp.status, body)
            try:
                answer = _token.decode(body)
                lifetime = float(answer.expires_in)
            except (msgspec.DecodeError, ValueError):
                raise UpstreamError(f"{self._http.name} sent an invalid token response", retryable=True) from None
            self._token = answer.access_token
            self._refresh_at = started + max(lifetime - REFRESH_BEFORE_S, lifetime / 2)
            # Not sent in its last moments: it could expire on the way.
            self._expires_at = started + lifetime - min(60.0, lifetime / 4)
            self._failed = None
            return answer.access_token
        except UpstreamError as exc:
            self._failed = (time.monotonic() + FAILURE_MEMORY_S, exc)
            raise
        finally:
            self._refreshing = None

    def _refused(self, status: int, body: bytes) -> UpstreamError:
        try:
            detail = _error.decode(body)
        except msgspec.DecodeError:
            detail = TokenError()
        # Only the first line: the rest is trace and correlation ids and a timestamp.
        said = detail.error_description.splitlines()[0] if detail.error_description else ""
        said = redact(said.replace(self._secret, "***"))
        what = " ".join(part for part in (str(status), detail.error) if part)
        # 4xx other than 429: the tenant, client or secret is wrong, which is ours to fix (401).
        upstream = status if status == 429 or status >= 500 else 401
        err = UpstreamError.for_status(upstream, f"{self._http.name} answered {what}" + (f": {said}" if said else ""))
        err.upstream_status = upstream
        return err

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        await self._http.aclose()


def _again(err: UpstreamError) -> UpstreamError:
    """A fresh copy for each request that meets the same failure (one exception object raised in
    many tasks would collect all their tracebacks)."""
    copy = UpstreamError(err.message, status=err.status, retryable=err.retryable, code=err.code,
                         retry_after_s=err.retry_after_s)
    copy.upstream_status = err.upstream_status
    return copy


def _retrieve(task: asyncio.Task[str]) -> None:
    # A refresh nobody awaited to the end (its requests were cancelled) must not log "never retrieved".
    if not task.cancelled():
        task.exception()
