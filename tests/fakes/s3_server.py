"""An S3-compatible server for the file store's tests: moto's, run as a process of its own on a free port.

moto checks what S3 checks that matters here: every request's SigV4 signature against the secret of
an IAM access key it issued (INITIAL_NO_AUTH_ACTION_COUNT: only the calls that create that key go
unsigned), multipart parts of at least 5 MiB but the last, ranges, and S3's XML error bodies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from botocore.session import Session  # type: ignore[import-untyped]

from broker.cli.embedded_redis import free_port

REGION = "us-east-1"
# The IAM calls below that make the access key (user, policy, key) go unsigned; every call after is checked.
UNSIGNED_SETUP_CALLS = 3


class S3Server:
    """`host` is the address it binds (and is reached at); `prefix` what runs it there (bench/hosts.py's
    `ip netns exec NAME`, when the storage is a host apart)."""

    def __init__(self, log_path: Path, host: str = "127.0.0.1", prefix: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://{host}:{self.port}"
        self.host, self.prefix = host, prefix
        self.log_path = log_path
        self.access_key_id = self.secret_access_key = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> S3Server:
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(UNSIGNED_SETUP_CALLS)}
        moto_server = Path(sys.executable).parent / "moto_server"
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen([*self.prefix, str(moto_server), "-H", self.host, "-p", str(self.port)],
                                          stdout=log, stderr=subprocess.STDOUT, env=env)
        end = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.endpoint_url}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < end and self._proc.poll() is None, self.log_path.read_text()
                time.sleep(0.1)
        iam = self._client("iam", access_key_id="setup", secret_access_key="setup")
        iam.create_user(UserName="broker")
        iam.put_user_policy(UserName="broker", PolicyName="s3", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="broker")["AccessKey"]
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        return self

    def returncode(self) -> int | None:
        """None while the server runs; its exit status once it has exited."""
        return self._proc.poll() if self._proc is not None else None

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)

    def _client(self, service: str, *, access_key_id: str, secret_access_key: str) -> Any:
        return Session().create_client(service, region_name=REGION, endpoint_url=self.endpoint_url,
                                       aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key)

    def client(self) -> Any:
        """A botocore S3 client with the issued key: the tests' own look into the bucket."""
        return self._client("s3", access_key_id=self.access_key_id, secret_access_key=self.secret_access_key)

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str, **overrides: Any) -> dict[str, Any]:
        """`batches.s3` for this server."""
        return {"bucket": bucket, "endpoint_url": self.endpoint_url, "region": REGION,
                "access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key, **overrides}

    def keys(self, bucket: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Every object under `prefix`: key → its listing entry."""
        found: dict[str, dict[str, Any]] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update({item["Key"]: item for item in page.get("Contents", [])})
        return found
