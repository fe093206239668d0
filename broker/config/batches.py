"""Config for files and the Batch API (broker/batches/files.py, broker/batches/records.py, broker/batches/runner.py)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from broker.config.types import Secret, Strict

DEFAULT_FILES_DIR = "llm-broker-files"  # relative to the working directory of every process


class S3Store(Strict):
    """File bodies in an S3-compatible bucket (broker/batches/s3_store.py) instead of a shared directory.

    Credentials: `access_key_id` + `secret_access_key` (+ `session_token`) when given, else botocore's
    chain, as the AWS SDKs walk it (environment, shared files and `profile`, web identity / IRSA, ECS,
    instance role). The bucket must exist; the broker never creates or configures one.
    """

    bucket: Annotated[str, msgspec.Meta(min_length=3, max_length=63)]
    prefix: str = ""  # every key starts with it, e.g. "llm-broker/files/"
    region: str = "us-east-1"
    endpoint_url: str | None = None  # MinIO, Ceph, R2...; unset (or empty): AWS's https://s3.<region>.amazonaws.com
    # Bucket in the path (https://host/bucket/key) rather than the host name (https://bucket.host/key):
    # unset, path style with an endpoint_url (what most S3-compatible servers want), virtual-hosted on AWS.
    path_style: bool | None = None
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None
    profile: str | None = None  # a shared-credentials profile for the chain
    # Uploads past this go up as a multipart upload in parts of this size, so memory holds one part.
    # S3 refuses parts under 5 MiB (but the last): https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html
    part_bytes: Annotated[int, msgspec.Meta(ge=5 * 1024 * 1024, le=5 * 1024 * 1024 * 1024)] = 8 * 1024 * 1024
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0  # the longest wait for the store's next bytes

    def __post_init__(self) -> None:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither (botocore's chain)")

    def secrets(self) -> list[str]:
        return [s.reveal() for s in (self.access_key_id, self.secret_access_key, self.session_token) if s]


class BatchSettings(Strict):
    """Files and the Batch API (broker/batches/files.py, broker/batches/records.py, broker/batches/runner.py)."""

    # Where file bodies live (a directory every API and batch-worker process shares); metadata is in Redis.
    # Unset: DEFAULT_FILES_DIR, except under `llm-broker dev`, whose files last only as long as it runs
    # (in its temp dir, beside its embedded Redis's, removed at exit).
    files_dir: str | None = None
    s3: S3Store | None = None  # or an S3-compatible bucket (then leave files_dir unset)
    max_file_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 34)] = 200 * 1024 * 1024
    max_lines: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100_000
    file_ttl_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30  # uploads and batch outputs
    # Lines of one batch queued or running at once: the rest wait in its input file, not in Redis.
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30  # a batch's record after it ends
    # arq's job queue on a Redis of its own (redis:// or redis+sentinel://); unset, the broker's Redis.
    # Needed on Redis Cluster, which arq cannot use; the batches' own state stays in the cluster.
    queue_url: str | None = None

    def __post_init__(self) -> None:
        if self.s3 is not None and self.files_dir is not None:
            raise ValueError("set `files_dir` (a shared directory) or `s3` (a bucket), not both")

    @property
    def store_dir(self) -> str:
        """The file store's directory."""
        return self.files_dir or DEFAULT_FILES_DIR
