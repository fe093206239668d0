"""Config for files and the Batch API (broker/batches/files.py, broker/batches/records.py, broker/batches/runner.py)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from broker.config.types import Strict

DEFAULT_FILES_DIR = "llm-broker-files"  # relative to the working directory of every process


class BatchSettings(Strict):
    """Files and the Batch API (broker/batches/files.py, broker/batches/records.py, broker/batches/runner.py)."""

    # Where file bodies live (a directory every API and batch-worker process shares); metadata is in Redis.
    # Unset: DEFAULT_FILES_DIR, except under `llm-broker dev`, whose files last only as long as it runs
    # (in its temp dir, beside its embedded Redis's, removed at exit).
    files_dir: str | None = None
    max_file_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 34)] = 200 * 1024 * 1024
    max_lines: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100_000
    file_ttl_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30  # uploads and batch outputs
    # Lines of one batch queued or running at once: the rest wait in its input file, not in Redis.
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30  # a batch's record after it ends
    # arq's job queue on a Redis of its own (redis:// or redis+sentinel://); unset, the broker's Redis.
    # Needed on Redis Cluster, which arq cannot use; the batches' own state stays in the cluster.
    queue_url: str | None = None

    @property
    def store_dir(self) -> str:
        """The file store's directory."""
        return self.files_dir or DEFAULT_FILES_DIR
