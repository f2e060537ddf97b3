"""Start ``inversescope view`` as a subprocess for a test, and stop it on every path."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path


def inversescope_command() -> list[str]:
    """The installed console script beside this interpreter (``python -m`` where absent)."""
    script = Path(sys.executable).parent / "inversescope"
    return [str(script)] if script.exists() else [sys.executable, "-m", "inversescope.flows.cli"]


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            return proc.stdout.readline()
        if proc.poll() is not None:
            return ""
    return ""


def stop(proc: subprocess.Popen) -> None:
    """Kill the server's whole process group (it may have children) and reap it."""
    with suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@contextmanager
def running_view(*args: str, timeout: float = 120):
    """``inversescope view ARGS --port 0`` in its own process group, yielding (process, URL);
    the group is killed when the block ends, however it ends."""
    proc = subprocess.Popen(
        [*inversescope_command(), "view", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = _first_line(proc, timeout)
        found = re.search(r"at (http://\S+/) ", line)
        if not found:
            stop(proc)
            raise AssertionError(
                f"inversescope view printed no URL ({line!r}): {proc.stderr.read()}"
            )
        yield proc, found.group(1)
    finally:
        stop(proc)
