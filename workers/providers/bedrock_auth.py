"""Signing Bedrock requests: AWS's own SigV4 signer and credential chain (botocore), on our own transport.

botocore signs an `AWSRequest` we build from the exact URL, body and headers the shared aiohttp client
then sends (workers/providers/http.py), so what was signed is what goes on the wire. Two details make
that hold:
- The model id goes into the path as botocore's serializer renders a `{modelId}` label: percent-encoded
  with nothing but unreserved characters left bare (`us.anthropic.claude-3-5-haiku-20241022-v1%3A0`;
  an ARN's `/` becomes `%2F`). SigV4 then encodes that path once more for its canonical request
  (`%253A`), as AWS does when it checks; the transport must send the path as is, never re-quoted.
- Credentials are frozen per request. Static keys never change; the chain's (an assumed role, web
  identity, an instance profile) are `RefreshableCredentials`, which botocore refreshes when they near
  expiry. A refresh may call STS or the instance metadata service, so it runs in a thread, and only when
  botocore says one is due.
A Bedrock API key (https://docs.aws.amazon.com/bedrock/latest/userguide/api-keys-use.html) replaces
SigV4 with a bearer token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials, RefreshableCredentials  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError  # type: ignore[import-untyped]
from botocore.session import Session  # type: ignore[import-untyped]
from botocore.utils import percent_encode  # type: ignore[import-untyped]

from broker.config import BedrockProvider
from broker.errors import UpstreamError
from broker.ops import redaction

SERVICE = "bedrock"  # the signing name of bedrock-runtime


def model_path(model: str, action: str) -> str:
    """`/model/{modelId}/{action}`, the label encoded as botocore's rest-json serializer encodes it."""
    return f"/model/{percent_encode(model)}/{action}"


class Signer:
    def __init__(self, config: BedrockProvider) -> None:
        self.region = config.region
        self._profile = config.profile
        self._bearer = config.api_key.reveal() if config.api_key else None
        self._credentials: Any = None
        if config.access_key_id is not None and config.secret_access_key is not None:
            token = config.session_token.reveal() if config.session_token else None
            self._credentials = Credentials(config.access_key_id.reveal(), config.secret_access_key.reveal(), token)
        self._resolving = asyncio.Lock()
        self._seen: tuple[str, str | None] | None = None

    async def sign(self, url: str, body: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        """`headers` plus the authorization for POSTing `body` to `url` (which must be sent exactly so)."""
        if self._bearer is not None:
            return {**headers, "authorization": f"Bearer {self._bearer}"}
        credentials = await self._frozen()
        request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        SigV4Auth(credentials, SERVICE, self.region).add_auth(request)
        return {str(k): str(v) for k, v in request.headers.items()}

    async def _frozen(self) -> Any:
        if self._credentials is None:
            async with self._resolving:
                if self._credentials is None:
                    self._credentials = await asyncio.to_thread(self._resolve)
        credentials = self._credentials
        if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
            frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
        else:
            frozen = credentials.get_frozen_credentials()
        if self._seen != (frozen.secret_key, frozen.token):
            # The chain's secrets are in no config, yet must never reach a reply or a log either.
            self._seen = (frozen.secret_key, frozen.token)
            redaction.remember([frozen.secret_key, frozen.token or ""])
        return frozen

    def _resolve(self) -> Any:
        """The standard chain, as the AWS SDKs walk it (runs in a thread: it may call out)."""
        try:
            credentials = Session(profile=self._profile).get_credentials()
        except BotoCoreError as exc:
            raise _no_credentials(str(exc)) from None
        if credentials is None:
            raise _no_credentials("none found in the environment, the shared files or an instance role")
        return credentials


def _no_credentials(why: str) -> UpstreamError:
    # A 403 in effect: our misconfiguration, which another deployment (other credentials) may not share.
    return UpstreamError.for_status(403, f"no AWS credentials for Bedrock: {why}")
