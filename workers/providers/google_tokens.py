"""OAuth access tokens for Google Cloud APIs (Vertex AI), minted by google-auth and kept fresh.

google-auth does the protocol: a service-account key signs a JWT-bearer assertion that its
`token_uri` exchanges for an access token (https://developers.google.com/identity/protocols/oauth2/service-account),
and application-default credentials find a key, a gcloud login or the metadata server
(https://cloud.google.com/docs/authentication/application-default-credentials). Its refresh is
blocking HTTP, so it runs in a thread; concurrent calls that find the token stale share that one
refresh rather than each minting its own. A token is replaced ahead of its expiry by a quarter of its
lifetime, at most five minutes (google-auth's own margin is 3m45s, which would leave a short-lived
token forever stale), so no call leaves with a token that dies on the way.

The HTTP underneath is a small urllib adapter: google-auth ships transports for `requests` and
`urllib3`, neither of which the broker otherwise depends on. Tokens and keys stay out of every
message raised here: an UpstreamError carries the token endpoint's error code and description only.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport
from google.oauth2 import service_account

from broker.errors import UpstreamError, redact

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
MAX_EARLY_S = 300.0


class _Response(google.auth.transport.Response):
    def __init__(self, status: int, headers: Mapping[str, str], data: bytes) -> None:
        self._status, self._headers, self._data = status, headers, data

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def data(self) -> bytes:
        return self._data


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected token request would carry a signed assertion to another host.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class UrllibRequest(google.auth.transport.Request):
    """google-auth's transport interface over the standard library (blocking: call it in a thread)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(_NoRedirect())

    def __call__(self, url: str, method: str = "GET", body: bytes | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float | None = None,
                 **kwargs: Any) -> _Response:
        request = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)
        try:
            with self._opener.open(request, timeout=timeout or self.timeout_s) as response:
                return _Response(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:  # a status google-auth reads itself (400 invalid_grant, 5xx...)
            return _Response(exc.code, dict(exc.headers), exc.read())
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise google.auth.exceptions.TransportError(  # type: ignore[no-untyped-call]
                f"cannot reach {url}: {reason}") from None


class TokenSource:
    """The bearer token a Vertex AI call carries, for one deployment's credentials."""

    def __init__(self, name: str, credentials_file: str | None, *, timeout_s: float) -> None:
        self.name = name
        self.credentials_file = credentials_file
        self._transport = UrllibRequest(timeout_s)
        self._credentials: google.auth.credentials.Credentials | None = None
        self._token = ""
        self._refresh_at = 0.0  # time.monotonic() after which the token is replaced
        self._refreshing: asyncio.Future[str] | None = None

    async def token(self) -> str:
        if self._token and time.monotonic() < self._refresh_at:
            return self._token
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(asyncio.to_thread(self._refresh))
            self._refreshing.add_done_callback(self._refreshed)
        # Shielded: a caller cancelled mid-refresh must not cancel the refresh the others wait on.
        return await asyncio.shield(self._refreshing)

    def _refreshed(self, future: asyncio.Future[str]) -> None:
        self._refreshing = None
        if not future.cancelled() and future.exception() is None:
            self._token = future.result()

    def forget(self) -> None:
        """The upstream refused the token (revoked, or a clock ahead of ours): the next call mints another."""
        self._token, self._refresh_at = "", 0.0

    def _refresh(self) -> str:
        """Blocking: load the credentials once, then mint a token."""
        started = time.monotonic()
        try:
            if self._credentials is None:
                self._credentials = self._load()
            self._credentials.refresh(self._transport)  # type: ignore[no-untyped-call]
        except google.auth.exceptions.GoogleAuthError as exc:
            raise self._error(exc) from None
        except (OSError, ValueError) as exc:  # an unreadable or malformed key file
            raise UpstreamError.for_status(
                401, f"upstream {self.name}: cannot read Google credentials: {type(exc).__name__}") from None
        token, expiry = self._credentials.token, self._credentials.expiry
        if not isinstance(token, str) or not token:
            raise UpstreamError(f"upstream {self.name}: Google's token endpoint sent no token", retryable=True)
        lifetime = _seconds_until(expiry) if expiry is not None else 3600.0
        self._refresh_at = started + max(lifetime - min(MAX_EARLY_S, lifetime / 4), 0.0)
        return token

    def _load(self) -> google.auth.credentials.Credentials:
        if self.credentials_file:
            return service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call,no-any-return]
                self.credentials_file, scopes=SCOPES)
        credentials, _ = google.auth.default(scopes=SCOPES)
        return credentials

    def _error(self, exc: google.auth.exceptions.GoogleAuthError) -> UpstreamError:
        """Refused or missing credentials are our misconfiguration, as a refused key is (a 502 that fails
        over, never retried here); a token endpoint that is down or busy is worth another try."""
        detail = redact(str(exc.args[0]) if exc.args else type(exc).__name__)[:300]
        if exc.retryable or isinstance(exc, google.auth.exceptions.TransportError):
            return UpstreamError(f"upstream {self.name}: cannot get a Google access token ({detail})",
                                 status=503, retryable=True)
        what = "found no Google credentials" if isinstance(exc, google.auth.exceptions.DefaultCredentialsError) \
            else "Google refused the credentials"
        return UpstreamError.for_status(401, f"upstream {self.name}: {what} ({detail})")


def _seconds_until(expiry: datetime.datetime) -> float:
    # google-auth keeps expiry as a naive UTC datetime.
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    return (expiry - now).total_seconds()
