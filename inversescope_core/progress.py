"""Progress of long work as log lines: stage, step, rate and ETA, at most every few seconds."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from inversescope.core.faults import fault_counter

log = logging.getLogger(__name__)


class Progress:
    """Counts units of work and logs ``stage: done/total (pct) rate unit/s ETA h:mm:ss``."""

    def __init__(
        self, stage: str, total: int, unit: str = "steps", every_s: float = 5.0, start: int = 0
    ):
        self.stage, self.total, self.unit, self.every_s = stage, total, unit, every_s
        self.done = start
        self._start_done = start
        self._t0 = self._last = time.perf_counter()

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._t0
        return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        fault_counter(self.stage.split("[")[0], self.unit, self.done)  # tests only: see faults
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            log.info("%s", self.line(extra))

    def line(self, extra: str = "") -> str:
        rate = self.rate
        remaining = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = str(timedelta(seconds=int(remaining))) if remaining == remaining else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        tail = f" {extra}" if extra else ""
        return (
            f"{self.stage}: {self.done}/{self.total} {self.unit} ({pct:.1f}%) "
            f"{rate:.1f} {self.unit}/s ETA {eta}{tail}"
        )
