"""Fault injection for tests: kill this run at a named point of its work, once.

``INVERSESCOPE_FAULT=STAGE:POINT:FLAGFILE`` kills the process that reaches that point of stage
``STAGE`` with SIGKILL (as an out-of-memory kill or a lost node would), after creating
``FLAGFILE``; an existing flag file disarms it, so the rerun goes through. POINT is one of

- a shard id (``fault_point(stage, shard_id)`` at the start of each shard);
- ``start`` (the partial directory is ready, nothing built), ``built`` (built, not committed),
  ``renamed`` (moved into place, manifest not yet written);
- ``UNIT@N``: the first time the stage's progress counter of UNIT (steps, rows, samples,
  texts) reaches N.

Points are counters of the work, never wall-clock guesses. ``INVERSESCOPE_FAULT_SCOPE=group``
kills the whole process group (the run and every child it started), as ``kill -9 -PGID`` would;
the default kills the one process (a lost Dask worker). Unset, a point costs one environment
lookup.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV = "INVERSESCOPE_FAULT"
SCOPE_ENV = "INVERSESCOPE_FAULT_SCOPE"


def _armed(stage: str) -> tuple[str, str] | None:
    """(point, flag file) when a fault is armed for ``stage``."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    want_stage, point, flag = spec.split(":", 2)
    return (point, flag) if want_stage == stage else None


def fault_point(stage: str, point: str) -> None:
    armed = _armed(stage)
    if armed is not None and armed[0] == point:
        _fire(stage, point, armed[1])


def fault_counter(stage: str, unit: str, done: int) -> None:
    """Fire a ``UNIT@N`` fault of ``stage`` once its counter of ``unit`` reaches N."""
    armed = _armed(stage)
    if armed is None:
        return
    want_unit, _, at = armed[0].partition("@")
    if want_unit == unit and at.isdigit() and done >= int(at):
        _fire(stage, f"{unit}@{done}", armed[1])


def _fire(stage: str, point: str, flag: str) -> None:
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    group = os.environ.get(SCOPE_ENV) == "group"
    log.warning(
        "%s: fault injected at %s, killing %s %d",
        stage,
        point,
        "process group" if group else "process",
        os.getpgid(0) if group else os.getpid(),
    )
    for h in logging.getLogger().handlers:  # the line above is the test's evidence
        h.flush()
    if group:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
