"""Fan-out scaling: extract and sample throughput on a Dask LocalCluster of 1, 2, ... workers,
as a ratio against 1 worker (and against one local process with every core).

    python benchmarks/scaling.py [--preset ioi-tiny] [--workdir runs] [--workers 1,2]
        [--shards 8] [--set section.field=value ...] [--out benchmarks/out/scaling.json]

The upstream artifacts (prior, target, backbone, controls) are built or reused in ``--workdir``;
each measurement copies them into a fresh directory and runs the real path (the Prefect flow on
prefect-dask's ``DaskTaskRunner``, on a temporary Prefect server) up to ``sample``. Times are the
committed stages' wall times (plan to commit), so they include every shard's model loading.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from _common import write_result

from inversescope.config import load_run_config
from inversescope.flows.stage import run_keys, run_stage
from inversescope.storage.artifacts import ArtifactStore

UPSTREAM = ("prior", "target", "extract", "backbone", "controls")


def measure(run, base: Path, keys: dict[str, str]) -> dict[str, float]:
    """Run extract, then sample, in a fresh workdir holding copies of the other artifacts."""
    from inversescope.flows.pipeline import flow_for

    with tempfile.TemporaryDirectory(dir=base) as tmp:
        for name in ("prior", "target", "backbone", "controls"):
            shutil.copytree(base / name / keys[name], Path(tmp) / name / keys[name])
        out = flow_for(run.task)(run, tmp, "sample")["stages"]
        store = ArtifactStore(tmp)
        ext = store.require("extract", keys["extract"]).manifest
        smp = store.require("sample", keys["sample"]).manifest
    assert out["extract"]["status"] == out["sample"]["status"] == "ran"
    rows = sum(ext["metrics"]["rows"].values())
    return {
        "extract_seconds": ext["seconds"],
        "extract_rows_per_s": rows / ext["seconds"],
        "sample_seconds": smp["seconds"],
        "sample_samples_per_s": smp["metrics"]["n_samples"] / smp["seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--workdir", default="runs")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "scaling.json"))
    args = ap.parse_args()

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # the server first: its import (beartype) fails once nnsight is imported (by the stages)
    from inversescope.flows.fanout import temporary_server

    base = Path(args.workdir).resolve()
    run = load_run_config(args.preset, args.overrides)
    keys = run_keys(run)
    with temporary_server():  # the Dask workers report to it
        for name in UPSTREAM:
            run_stage(name, run, base, keys)
        result = {"preset": args.preset, "cpus": os.cpu_count(), "shards": args.shards}
        result["local"] = measure(run, base, keys)
        for n in [int(x) for x in args.workers.split(",")]:
            fanned = load_run_config(
                args.preset,
                [
                    *args.overrides,
                    "runner.kind=dask",
                    f"runner.n_workers={n}",
                    f"runner.shards={args.shards}",
                ],
            )
            result[f"dask_{n}"] = measure(fanned, base, keys)
    one = result.get("dask_1")
    if one:
        result["ratios_vs_1_worker"] = {
            k: {
                "extract": v["extract_rows_per_s"] / one["extract_rows_per_s"],
                "sample": v["sample_samples_per_s"] / one["sample_samples_per_s"],
            }
            for k, v in result.items()
            if k.startswith(("dask_", "local")) and isinstance(v, dict)
        }
    result["note"] = (
        "throughput ratios against one Dask worker (>1 is faster); 'local' is one process "
        "using every core, with no Dask"
    )
    write_result(result, args.out)


if __name__ == "__main__":
    main()
