"""The fake Bedrock's door: SigV4 checked as AWS checks it, with botocore recomputing the signature.

From the request as received (method, raw path, query, the headers the Authorization header says were
signed, the body) the fake rebuilds the canonical request and the string to sign with botocore's
`SigV4Auth`, keyed with the secret it holds for the access key, and compares signatures
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html). Before
that, as AWS does: a known access key (and its session token, for temporary keys), a credential scope
of today's date, this region, service `bedrock` and `aws4_request`, `host` and `x-amz-date` among the
signed headers, and a request date within 5 minutes. Refusals are 403s in AWS's shape, the signature
mismatch with the canonical request AWS expected (a client must not pass that on: it holds signed
header values).
"""

from __future__ import annotations

import hmac
import re
from datetime import datetime, timedelta, timezone

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.requests import Request

SERVICE = "bedrock"
MAX_SKEW = timedelta(minutes=5)
_AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^,]+), ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$")


class Refusal(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


class Keys:
    """The fake account's credentials: access key id → (secret, session token or None), and API keys."""

    def __init__(self, region: str, keys: dict[str, tuple[str, str | None]], api_keys: tuple[str, ...] = ()) -> None:
        self.region, self.keys, self.api_keys = region, keys, api_keys

    def check(self, request: Request, body: bytes, now: datetime | None = None) -> None:
        authorization = request.headers.get("authorization", "")
        if authorization.startswith("Bearer "):
            if authorization[7:] not in self.api_keys:
                raise Refusal("UnrecognizedClientException", "Invalid API Key format: Must start with pre-defined prefix.")
            return
        match = _AUTH.match(authorization)
        if match is None:
            raise Refusal("MissingAuthenticationTokenException", "Missing Authentication Token")
        credential, signed, signature = match.groups()
        access_key, _, scope = credential.partition("/")
        if access_key not in self.keys:
            raise Refusal("UnrecognizedClientException", "The security token included in the request is invalid.")
        secret, token = self.keys[access_key]
        if token is not None and request.headers.get("x-amz-security-token") != token:
            raise Refusal("UnrecognizedClientException", "The security token included in the request is invalid.")
        stamp = request.headers.get("x-amz-date", "")
        self._check_scope(scope, stamp, now or datetime.now(timezone.utc))
        names = signed.split(";")
        if "host" not in names or "x-amz-date" not in names:
            raise Refusal("IncompleteSignatureException", "'Host' and 'X-Amz-Date' must be signed headers.")
        expected = self._signature(request, body, names, stamp, Credentials(access_key, secret, token))
        if not hmac.compare_digest(expected[0], signature):
            raise Refusal("InvalidSignatureException", "The request signature we calculated does not match the "
                          "signature you provided. Check your AWS Secret Access Key and signing method. Consult "
                          "the service documentation for details.\n\nThe Canonical String for this request should "
                          f"have been\n'{expected[1]}'\n\n")

    def _check_scope(self, scope: str, stamp: str, now: datetime) -> None:
        parts = scope.split("/")
        if len(parts) != 4 or parts[3] != "aws4_request":
            raise Refusal("IncompleteSignatureException", f"Credential should be scoped correctly: {scope}")
        date, region, service = parts[:3]
        if date != stamp[:8]:
            raise Refusal("InvalidSignatureException", f"Date in Credential scope does not match YYYYMMDD from "
                          f"ISO-8601 version of date from HTTP: '{date}' != '{stamp[:8]}', from 'x-amz-date'.")
        if region != self.region:
            raise Refusal("InvalidSignatureException", f"Credential should be scoped to a valid region, not '{region}'. ")
        if service != SERVICE:
            raise Refusal("InvalidSignatureException", f"Credential should be scoped to correct service: '{SERVICE}'. ")
        try:
            when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            raise Refusal("IncompleteSignatureException", "Date must be in ISO-8601 'basic format'.") from None
        if abs(now - when) > MAX_SKEW:
            raise Refusal("InvalidSignatureException", f"Signature expired: {stamp} is now earlier than "
                          f"{(now - MAX_SKEW):%Y%m%dT%H%M%SZ} ({now:%Y%m%dT%H%M%SZ} - 5 min.)")

    def _signature(self, request: Request, body: bytes, names: list[str], stamp: str,
                   credentials: Credentials) -> tuple[str, str]:
        """botocore's signature (and canonical request) over what arrived: the raw path, not a decoded one."""
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string", b"")
        url = f"{request.url.scheme}://{request.headers.get('host', '')}{raw_path.decode()}"
        url += f"?{query.decode()}" if query else ""
        aws = AWSRequest(method=request.method, url=url, data=body,
                         headers={name: request.headers.get(name, "") for name in names})
        aws.context["timestamp"] = stamp
        signer = SigV4Auth(credentials, SERVICE, self.region)
        canonical = signer.canonical_request(aws)
        return signer.signature(signer.string_to_sign(aws, canonical), aws), canonical
