"""benchmarks/gpu_check.py: its --tiny run (the same code as on a GPU, tiny shapes, CPU) writes
every figure and the projection; without CUDA the full check refuses with one clear line."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_tiny_run_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = run("--tiny", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["tiny"] and result["device"] == "cpu"
    assert result["extract_gpt2"]["sites"] == 2 * 4  # every head of the tiny GPT-2
    for section, rate in (
        ("extract_gpt2", "rows_per_s"),
        ("extract_gpt2", "bare_forward_rows_per_s"),
        ("extract_llama3_8b_shape", "rows_per_s"),
        ("controls", "steps_per_s"),
        ("sampling", "samples_per_s"),
        ("sampling", "generate_samples_per_s"),
        ("sampling", "reread_rows_per_s"),
    ):
        assert result[section][rate] > 0, (section, rate)
    proj = result["projection"]
    assert proj["experiment"]["samples"] == 144 * 100 * 32
    assert proj["gpu_hours"] == sum(proj["seconds"].values()) / 3600
    assert "projected GPU-hours" in proc.stdout


def test_without_cuda_the_full_check_refuses():
    proc = run("--out", "/nonexistent/x.json", env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--tiny" in proc.stderr
