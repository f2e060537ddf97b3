"""README's Python quick start runs as written, right after the demo, from the directory that
holds ``runs/``."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    importing = [
        b for b in blocks if re.search(r"^import inversescope|^from inversescope", b, re.M)
    ]
    assert importing, "README has no python block that imports inversescope"
    return importing[0]


def test_the_quick_start_is_short_and_comes_first():
    text = README.read_text(encoding="utf-8")
    block = quick_start()
    assert len(block.strip().splitlines()) <= 15
    assert text.index(block) < text.index("## The command line")


def test_the_quick_start_runs_as_written(small_run, tmp_path):
    shutil.copytree(small_run[0], tmp_path / "runs")
    out = subprocess.run(
        [sys.executable, "-c", quick_start()], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for expected in ("fcr", "chance", "first_name", "distance", "accepted"):
        assert expected in out.stdout, expected
