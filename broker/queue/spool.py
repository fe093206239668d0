"""Uploads that travel with a job by reference: an audio file spooled to disk, never into Redis.

A transcription's audio (up to `server.max_upload_bytes`) is copied by the API, as it arrives, into
`<batches.files_dir>/uploads/` (the directory every API and worker process shares, as the Batch API's
file store: broker/batches/files.py), and its job carries only an `Upload` (path, name, type, size).
The worker that serves the job streams it from there to the upstream.

Who removes it: the API that spooled it, once the job has ended for its client (answer, error,
timeout, client gone); for an async job, whose end no API waits for, the worker that answers it.
Anything left behind (a crashed process, an async job that failed) is swept: every file's name starts
with the unix time past which no job can still need it (its deadline's bound plus a margin), and each
API process sweeps past-due files at most every SWEEP_EVERY_S, when it spools a new one.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import IO

from broker.wire.audio import Upload

SWEEP_EVERY_S = 60.0
MARGIN_S = 60  # past the job's deadline: a worker may still be finishing the upload when it passes


class Spool:
    def __init__(self, files_dir: str) -> None:
        self.root = Path(files_dir) / "uploads"  # made on the first upload
        self._swept = 0.0

    def create(self, keep_s: float) -> tuple[Path, IO[bytes]]:
        """A new file, and a writer for it, that may be removed `keep_s` (+ MARGIN_S) from now."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{int(time.time() + keep_s) + MARGIN_S}-{secrets.token_hex(12)}"
        return path, open(path, "xb")

    def sweep(self, now: float | None = None) -> int:
        """Remove files past their time (at most once every SWEEP_EVERY_S unless `now` is given); how many."""
        now = time.time() if now is None else now
        if now - self._swept < SWEEP_EVERY_S or not self.root.is_dir():
            return 0
        self._swept = now
        removed = 0
        for entry in os.scandir(self.root):
            until, _, _ = entry.name.partition("-")
            if until.isdigit() and int(until) < now:
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
        return removed


def present(upload: Upload) -> bool:
    return os.path.isfile(upload.path)


def discard(upload: Upload | Path) -> None:
    Path(upload.path if isinstance(upload, Upload) else upload).unlink(missing_ok=True)
