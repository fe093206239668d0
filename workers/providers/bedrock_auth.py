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

from collections.abc import Mapping

from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.utils import percent_encode  # type: ignore[import-untyped]

from broker.aws_credentials import AwsCredentials
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
        self._bearer = config.api_key.reveal() if config.api_key else None
        self._credentials = AwsCredentials(config.access_key_id, config.secret_access_key, config.session_token,
                                           config.profile, _no_credentials)

    async def sign(self, url: str, body: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        """`headers` plus the authorization for POSTing `body` to `url` (which must be sent exactly so)."""
        if self._bearer is not None:
            return {**headers, "authorization": f"Bearer {self._bearer}"}
        credentials = await self._credentials.frozen()
        request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        SigV4Auth(credentials, SERVICE, self.region).add_auth(request)
        return {str(k): str(v) for k, v in request.headers.items()}


def _no_credentials(why: str) -> UpstreamError:
    # A 403 in effect: our misconfiguration, which another deployment (other credentials) may not share.
    return UpstreamError.for_status(403, f"no AWS credentials for Bedrock: {why}")
