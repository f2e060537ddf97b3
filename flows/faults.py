"""Fault injection for tests: kill this process at a named point, once.

``INVERSESCOPE_FAULT=STAGE:POINT:FLAGFILE`` makes the process that reaches ``fault_point(STAGE,
POINT)`` kill itself with SIGKILL (as an out-of-memory kill or a lost node would), after creating
``FLAGFILE``; an existing flag file disarms it, so the rerun goes through. Points are counters of
the work (a shard id), never wall-clock guesses. Unset, it costs one environment lookup.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV = "INVERSESCOPE_FAULT"


def fault_point(stage: str, point: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    want_stage, want_point, flag = spec.split(":", 2)
    if (stage, point) != (want_stage, want_point):
        return
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    log.warning("%s: fault injected at %s, killing process %d", stage, point, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)
