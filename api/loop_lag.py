"""How late this API process's event loop runs: the door's (api/door.py) measure of a process past
what it can do, whatever the machine and whatever the load.

A task started with the app sleeps `INTERVAL_S` and measures how late it woke: a timer's lateness is
how long the loop was busy with other callbacks, i.e. how long every accept, read and stream chunk
waits. A burst of stream set-ups and relays saturates the loop well before `server.max_in_flight`
is reached (issue 22: 500 new streams a second left 423 of 10,000 unanswered with the in-flight cap
never hit); a fixed `server.max_new_per_s` held that burst but is a figure of one machine, and holds
short calls too. Lag is the saturation itself, so it adapts to both (Node's `toobusy-js` sheds the
same way; https://github.com/STRML/node-toobusy).

Samples are smoothed by a time-weighted moving average (`SMOOTHING_S`), not a max over a window: under
c=64 of ordinary traffic one process's samples reached tens of milliseconds now and then (a large
iteration, a garbage collection) while the average stayed low, and a max would have shed on those
spikes; during a burst the lag is sustained, so the average crosses the threshold within a fraction
of a second. The door sheds while the average is above `server.shed_lag_ms` and takes requests
again only once it is below `RESUME_SHARE` of it (hysteresis: no flapping at the edge, where every
readmitted request would push it back over). The door reads one bool per request; all the work is
here, 100 times a second.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from broker.ops import metrics

# 10 ms: fine enough to see a saturated loop within a few samples, coarse enough to cost nothing
# (libuv's timers have millisecond resolution anyway, so an idle loop reads 0-1 ms late).
INTERVAL_S = 0.01
SMOOTHING_S = 0.5
RESUME_SHARE = 0.5
# Retry-After while shedding: the further past its threshold, the longer the backlog the loop works
# through; at the threshold one second (the SDKs' first back-off, openai-python `INITIAL_RETRY_DELAY`
# 0.5 s doubled), never more than MAX_RETRY_S so a client is not sent away for good.
MAX_RETRY_S = 10.0


class LoopLag:
    def __init__(self, shed_lag_ms: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.shed_lag_s = shed_lag_ms / 1000
        self.lag_s = 0.0  # the smoothed lateness, seconds
        self.shedding = False
        self._clock = clock
        self._observe = metrics.LOOP_LAG.observe

    def observe(self, late_s: float, elapsed_s: float) -> None:
        """One sample: the timer ran `late_s` late, `elapsed_s` after the previous one."""
        self._observe(late_s)
        self.lag_s += (1 - math.exp(-elapsed_s / SMOOTHING_S)) * (late_s - self.lag_s)
        if self.shed_lag_s:
            self.shedding = self.lag_s > self.shed_lag_s * (RESUME_SHARE if self.shedding else 1)

    def retry_after_s(self) -> float:
        return min(MAX_RETRY_S, max(1.0, self.lag_s / self.shed_lag_s)) if self.shed_lag_s else 1.0

    async def run(self) -> None:
        """Sample until cancelled (the app's lifespan starts and cancels it)."""
        clock = self._clock
        while True:
            started = clock()
            await asyncio.sleep(INTERVAL_S)
            elapsed = clock() - started
            self.observe(max(0.0, elapsed - INTERVAL_S), elapsed)
