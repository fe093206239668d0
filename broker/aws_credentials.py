"""AWS credentials as botocore resolves them, frozen per request: what Bedrock (workers/providers/bedrock_auth.py)
and the S3 file store (broker/batches/s3_client.py) sign with.

Static keys from the config never change. Without them, the standard chain, as the AWS SDKs walk it
(environment, the shared files and a `profile`, web identity, ECS and instance roles), gives
`RefreshableCredentials`, which botocore refreshes when they near expiry. Resolving the chain and a
refresh may call STS or the instance metadata service, so both run in a thread, and a refresh only when
botocore says one is due. The chain's secrets are in no config, yet must never reach a reply or a log
either: each new pair is handed to the redaction list (broker/ops/redaction.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from botocore.credentials import Credentials, RefreshableCredentials  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError  # type: ignore[import-untyped]
from botocore.session import Session  # type: ignore[import-untyped]

from broker.config.types import Secret
from broker.errors import BrokerError
from broker.ops import redaction


class AwsCredentials:
    """`missing(why)` is the error to raise when there are none: each user says it its own way."""

    def __init__(self, access_key_id: Secret | None, secret_access_key: Secret | None, session_token: Secret | None,
                 profile: str | None, missing: Callable[[str], BrokerError]) -> None:
        self._profile = profile
        self._missing = missing
        self._credentials: Any = None
        if access_key_id is not None and secret_access_key is not None:
            token = session_token.reveal() if session_token else None
            self._credentials = Credentials(access_key_id.reveal(), secret_access_key.reveal(), token)
        self._resolving = asyncio.Lock()
        self._seen: tuple[str, str | None] | None = None

    async def frozen(self) -> Any:
        """The credentials to sign one request with (botocore's `ReadOnlyCredentials`)."""
        if self._credentials is None:
            async with self._resolving:
                if self._credentials is None:
                    self._credentials = await asyncio.to_thread(self._resolve)
        credentials = self._credentials
        if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
            frozen = await asyncio.to_thread(credentials.get_frozen_credentials)  # may call STS: a thread
        else:
            frozen = credentials.get_frozen_credentials()
        if self._seen != (frozen.secret_key, frozen.token):
            self._seen = (frozen.secret_key, frozen.token)
            redaction.remember([frozen.secret_key, frozen.token or ""])
        return frozen

    def _resolve(self) -> Any:
        try:
            credentials = Session(profile=self._profile).get_credentials()
        except BotoCoreError as exc:
            raise self._missing(str(exc)) from None
        if credentials is None:
            raise self._missing("none found in the config, the environment, the shared files or an instance role")
        return credentials
