"""``benchmarks/view.py`` on a tiny synthetic workdir: it builds complete runs through the
pipeline's writers (the API opens them, ``inversescope verify`` finds nothing wrong) and times
every route."""

import json
import subprocess
import sys
from pathlib import Path

import inversescope
from inversescope.storage.verify import verify_workdir

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "view.py"


def test_the_view_benchmark_builds_real_runs_and_times_every_route(tmp_path):
    out = tmp_path / "view.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--workdir",
        str(tmp_path / "runs"),
        "--sites",
        "14",
        "--refs",
        "6",
        "--samples",
        "3",
        "--repeats",
        "1",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["samples_per_run"] == 14 * 6 * 3 and result["runs"] == 3
    statuses = {name: r["status"] for name, r in result["routes"].items()}
    assert statuses.pop("unknown site (404)") == 404
    assert statuses.pop("prompt too long (422)") == 422
    assert statuses.pop("site, 20 references") == 422  # 6 references: page 2 of 20 is none
    assert set(statuses.values()) == {200}, statuses
    runs = inversescope.runs(tmp_path / "runs")
    assert sorted(runs["method"]) == ["inversescope", "inversionview", "prior"]
    run = inversescope.open(tmp_path / "runs", key=runs["key"][0])
    assert run.sites[-1] == "L1H1" and len(run.sites) == 14 and run.results().height == 14 * 4
    assert verify_workdir(tmp_path / "runs").ok
