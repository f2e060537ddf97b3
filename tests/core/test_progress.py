"""Progress lines: stage, counts, percentage, rate and ETA, rate-limited."""

import logging

from inversescope.core.progress import Progress


def test_line_reports_rate_and_eta(monkeypatch):
    clock = iter([100.0, 110.0, 110.0])
    monkeypatch.setattr("inversescope.core.progress.time.perf_counter", lambda: next(clock))
    p = Progress("extract", 100, "rows", start=20)
    p.done = 70  # 50 rows in 10 s
    line = p.line("loss 1.0")
    assert line == "extract: 70/100 rows (70.0%) 5.0 rows/s ETA 0:00:06 loss 1.0"


def test_logs_at_most_every_few_seconds_and_at_the_end(monkeypatch, caplog):
    now = [0.0]
    monkeypatch.setattr("inversescope.core.progress.time.perf_counter", lambda: now[0])
    p = Progress("sample", 10, "samples", every_s=5.0)
    with caplog.at_level(logging.INFO, logger="inversescope.core.progress"):
        for step in range(10):
            now[0] = float(step)
            p.update(1)
    lines = [r.getMessage() for r in caplog.records]
    # t=5 s (6 done), then the last unit
    assert [line.split(" ")[1] for line in lines] == ["6/10", "10/10"]
    assert lines[-1].startswith("sample: 10/10 samples (100.0%)")


def test_unknown_rate_gives_unknown_eta(monkeypatch):
    monkeypatch.setattr("inversescope.core.progress.time.perf_counter", lambda: 0.0)
    assert Progress("controls", 5).line().endswith("0.0 steps/s ETA ?")
