"""``benchmarks/precision.py`` on a small run: it trains the controls stage's own build once per
precision, each in the precision it names, and refuses a workdir without the run's upstream."""

import json
import subprocess
import sys
from pathlib import Path

from inversescope.config import load_run_config
from inversescope.flows.stage import run_keys, run_stage

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "precision.py"


def _cmd(small, workdir, out):
    sets = [a for o in small for a in ("--set", o)]
    args = ["--workdir", str(workdir), *sets, "--steps", "3", "--rounds", "1", "--out", str(out)]
    return [sys.executable, str(SCRIPT), *args]


def test_the_precision_benchmark_trains_both_precisions(small, tmp_path):
    out = tmp_path / "precision.json"
    missing = subprocess.run(
        _cmd(small, tmp_path / "empty", out), capture_output=True, text=True, timeout=300
    )
    assert missing.returncode != 0 and "run `inversescope run ioi-tiny` there first" in (
        missing.stderr
    )
    run = load_run_config("ioi-tiny", small)
    keys = run_keys(run)
    for name in ("prior", "target", "extract", "backbone"):
        run_stage(name, run, tmp_path / "runs", keys)
    done = subprocess.run(
        _cmd(small, tmp_path / "runs", out), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    (row,) = result["rounds"]
    assert row["float32"]["ran_in"] == "float32" and row["bfloat16"]["ran_in"] == "bfloat16"
    assert row["ratio"] > 0 and result["steps"] == 3
    assert not list((tmp_path / "runs").glob("controls/*"))  # scratch builds only
