"""Peak memory of each stage against the number of prompts: does any stage hold state that grows
with the prior?

    python benchmarks/memory.py [--preset ioi-tiny] [--prompts 10000,50000,100000]
        [--workdir /tmp/memory-bench] [--set k=v ...] [--whole-run]
        [--out benchmarks/out/memory.json]

For each prior size, every stage runs in a process of its own (its inputs already built by the
processes before it), and the figure is that process's peak resident set (``ru_maxrss``) less
the peak of a process that imports the same modules and computes the same keys without
building anything. ``--whole-run`` also times ``inversescope run`` as a user runs it (every
stage in one process, on its temporary Prefect server) in a fresh workdir per size, and gives
that process's peak. Training is cut to a few steps (``--set`` the defaults below away to change
it): memory does not depend on how long a model trains, only on what a stage holds at once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STAGES = ("prior", "target", "extract", "backbone", "controls", "sample", "label", "fcr")
SHORT = [
    "target.train.steps=30",
    "target.min_accuracy=0",
    "backbone.train.steps=30",
    "controls.train.steps=30",
]

CHILD = r"""
import json, resource, sys
from inversescope.config import load_run_config
from inversescope.flows.stage import run_keys, run_stage
import inversescope.core.generator, inversescope.core.lm_training  # torch, as the stages
name, preset, workdir, overrides = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
run = load_run_config(preset, overrides)
keys = run_keys(run)
status = run_stage(name, run, workdir, keys).status if name != "-" else "none"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"stage": name, "status": status, "peak_bytes": peak}))
"""


def child(name: str, preset: str, workdir: str, overrides: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, name, preset, workdir, json.dumps(overrides)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


WHOLE = r"""
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def whole_run(preset: str, workdir: str, overrides: list[str]) -> int:
    """Peak resident set of ``inversescope run`` (its largest process: the run, not its Prefect
    server), measured by a process that runs nothing else."""
    argv = [sys.executable, "-m", "inversescope.flows.cli", "run", preset, "--workdir", workdir]
    for o in overrides:
        argv += ["--set", o]
    out = subprocess.run(
        [sys.executable, "-c", WHOLE, *argv], check=True, capture_output=True, text=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--prompts", default="10000,50000,100000")
    ap.add_argument("--workdir", default="/tmp/memory-bench")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--whole-run", action="store_true", help="also a whole `inversescope run`")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "memory.json"))
    args = ap.parse_args()
    baseline = child("-", args.preset, args.workdir, SHORT + args.overrides)["peak_bytes"]
    print(f"baseline (imports, keys): {baseline / 2**20:.0f} MiB", flush=True)
    table: dict[str, dict[str, float]] = {}
    for n in [int(x) for x in args.prompts.split(",")]:
        overrides = [*SHORT, f"prior.n_train={n}", *args.overrides]
        for name in STAGES:
            r = child(name, args.preset, args.workdir, overrides)
            mib = (r["peak_bytes"] - baseline) / 2**20
            table.setdefault(name, {})[str(n)] = mib
            print(f"{n:7d} prompts  {name:9s} {r['status']:7s} +{mib:7.0f} MiB", flush=True)
        if args.whole_run:
            peak = whole_run(args.preset, f"{args.workdir}/whole-{n}", overrides) / 2**20
            table.setdefault("whole run (peak, not above baseline)", {})[str(n)] = peak
            print(f"{n:7d} prompts  whole run: {peak:.0f} MiB", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"baseline_bytes": baseline, "above_baseline_mib": table}, indent=1)
    )
    sizes = args.prompts.split(",")
    print("\n| stage | " + " | ".join(f"{s} prompts" for s in sizes) + " |")
    print("| --- |" + " ---: |" * len(sizes))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[s]:.0f} MiB" for s in sizes) + " |")


if __name__ == "__main__":
    main()
