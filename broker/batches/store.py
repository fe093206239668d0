"""Where the Batch API's file bodies live: the seam between the files/batches code and the storage.

Two stores implement it: a directory every API and batch-worker process shares
(broker/batches/directory_store.py) and an S3-compatible bucket (broker/batches/s3_store.py).
The calls are the few the Batch API needs, each of which S3 can do without a whole file in memory:

- `put`: an upload, published whole when it completes (S3: one PUT, or a multipart upload past
  `part_bytes`, completed at the end). A reader never sees half a file.
- `read` / `stream`: a byte range (a batch reads its input from where it stopped) / the whole body.
- `append` + `commit`: a running batch's output, made durable piece by piece and published at the
  end. `append(id, at, data)` writes `data` at offset `at`, the size the batch last recorded, so a
  piece written by a step that died before recording it is simply overwritten; `commit(id, size)`
  publishes the first `size` bytes. Both are idempotent, so a step re-run after a crash is safe.
- `delete`, and `entries` for the sweep that deletes bodies whose metadata expired (files.sweep).

`files.open_store` builds the one the config names.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

import msgspec


class Entry(msgspec.Struct, frozen=True):
    """A body in the store, as the sweep sees it."""

    file_id: str
    committed: bool  # False: an output still being written (or left by a batch that is gone)
    age_s: float  # since its last write


class FileStore(Protocol):
    async def put(self, file_id: str, blocks: AsyncIterable[bytes]) -> int:
        """Store a whole file from `blocks`; its size. Nothing is published if `blocks` raises."""
        ...

    async def read(self, file_id: str, start: int, size: int) -> bytes:
        """Up to `size` bytes from `start` (b"" past the end); FileNotFoundError if there is no such file."""
        ...

    def stream(self, file_id: str) -> AsyncIterator[bytes]:
        """The whole body, as it is read; FileNotFoundError (at the first block) if there is no such file."""
        ...

    async def append(self, file_id: str, at: int, data: bytes) -> None:
        """Write `data` at offset `at` of an uncommitted file, dropping anything past `at`; durable on return."""
        ...

    async def commit(self, file_id: str, size: int) -> None:
        """Publish the uncommitted file's first `size` bytes under its id (done already: nothing to do)."""
        ...

    async def delete(self, file_id: str) -> None:
        """The file and anything uncommitted of it (absent: nothing to do)."""
        ...

    def entries(self) -> AsyncIterator[Entry]:
        ...

    async def remove(self, entry: Entry) -> None:
        """Delete what `entry` names: the committed file, or only the uncommitted pieces."""
        ...

    async def aclose(self) -> None:
        ...


def valid_id(file_id: str) -> bool:
    """Ids come from new_file_id (`file-` + hex): anything else (a path, a key) never reaches a store."""
    return file_id.startswith("file-") and file_id[5:].isalnum()
