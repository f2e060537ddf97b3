"""``benchmarks/batch_size.py`` on the session's small run: it trains the controls stage's own
build once per batch size, for the same number of pairs, without writing into the workdir, and
refuses batch sizes that do not divide the pairs."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "batch_size.py"


def _cmd(small, workdir, out, batches, pairs):
    sets = [a for o in small for a in ("--set", o)]
    args = ["--workdir", str(workdir), *sets, "--batches", batches, "--pairs", str(pairs)]
    return [sys.executable, str(SCRIPT), *args, "--rounds", "1", "--out", str(out)]


def test_the_batch_size_benchmark_trains_the_same_pairs_at_each_batch(small, small_run, tmp_path):
    workdir, _, _ = small_run
    out = tmp_path / "batch_size.json"
    bad = subprocess.run(
        _cmd(small, workdir, out, "8,16", 20), capture_output=True, text=True, timeout=300
    )
    assert bad.returncode != 0 and "--batches [8, 16]: each must divide --pairs 20" in bad.stderr
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    done = subprocess.run(
        _cmd(small, workdir, out, "8,16", 48), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    (row,) = result["rounds"]
    assert row["8"]["steps"] == 6 and row["16"]["steps"] == 3
    assert row["8"]["ratio"] == 1.0 and row["16"]["ratio"] > 0
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before  # scratch only
