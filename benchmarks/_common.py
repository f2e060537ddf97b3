"""Shared by the benchmark scripts: timing and writing results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` wall-clock timings of ``fn()`` (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def write_result(result: dict, out: str | Path) -> None:
    """Write the result as JSON (creating its folder) and print it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
