"""The spool of uploads that travel with a job by reference (broker/queue/spool.py)."""

from __future__ import annotations

import time
from pathlib import Path

from broker.queue.spool import Spool


def test_the_sweep_removes_only_uploads_past_their_time(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    late, out = spool.create(keep_s=-3600)
    out.close()
    live, out = spool.create(keep_s=600)
    out.close()
    assert spool.sweep(now=time.time()) == 1 and not late.exists() and live.exists()
