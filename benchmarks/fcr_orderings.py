"""Does the FCR ordering of two features over layers hold across seeds?

    python benchmarks/fcr_orderings.py [--preset ioi-tiny] [--seeds 0,1,2] [--workdir runs]
        [--first subject --then object] [--run]

For each seed, reads the newest ``fcr`` result of that preset and seed in the workdir (``--run``
first runs ``inversescope run PRESET --set seed=S`` for each seed; cached stages cost nothing),
and for each feature the FCR of every layer's attention output (``L{l}.attn``) with its
confidence interval. Reports the layer where each feature peaks, whether ``--then`` peaks after
``--first``, and whether the two peaks are separated by their intervals (``--then``'s FCR at its
own peak above its upper bound at ``--first``'s peak, and the reverse). IOI: subject, then
object; ICL: task, then input. Writes ``fcr_orderings_<preset>.json`` under ``benchmarks/out/``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
from _common import write_result

# ICL: the rule-based task (the labeller-based ``task`` needs a labeller that can read the
# demonstrations; icl-tiny's is its own 4-layer target, which names one translation for every
# text, so its ``task`` is constant and its FCR says nothing)
DEFAULT_PAIRS = {"ioi": ("subject", "object"), "icl": ("task_rule", "input")}


def newest_result(workdir: Path, preset: str, seed: int) -> tuple[Path, dict]:
    """The newest committed fcr artifact of (preset, seed), found through the manifests (so the
    analysis needs neither this code's keys nor the run's exact overrides)."""
    found = []
    for manifest in (workdir / "fcr").glob("*/manifest.json"):
        m = json.loads(manifest.read_text())
        run = m.get("run", {})
        if run.get("preset") == preset and run.get("seed") == seed:
            found.append((m["created"], manifest.parent, run))
    if not found:
        raise SystemExit(f"no fcr result of {preset} seed {seed} under {workdir}; use --run")
    _, path, run = max(found, key=lambda t: t[0])
    return path, run


def per_layer(results: pl.DataFrame, feature: str) -> list[dict]:
    rows = results.filter((pl.col("feature") == feature) & pl.col("site").str.ends_with(".attn"))
    return [
        {
            "layer": r["layer"],
            "fcr": r["fcr"],
            "ci": [r["ci_low"], r["ci_high"]],
            "chance": r["chance"],
        }
        for r in rows.sort("layer").iter_rows(named=True)
    ]


def _defined(r: dict) -> float:
    """FCR for ranking layers; NaN (no sample of the layer had the feature defined) ranks last."""
    return r["fcr"] if r["fcr"] == r["fcr"] else float("-inf")


def ordering(curve_a: list[dict], curve_b: list[dict]) -> dict:
    peak_a = max(curve_a, key=_defined)
    peak_b = max(curve_b, key=_defined)
    b_at_a = next(r for r in curve_b if r["layer"] == peak_a["layer"])
    a_at_b = next(r for r in curve_a if r["layer"] == peak_b["layer"])
    return {
        "first_peak_layer": peak_a["layer"],
        "then_peak_layer": peak_b["layer"],
        "then_after_first": peak_b["layer"] > peak_a["layer"],
        # each peak above the other feature's interval at that layer: the order is not noise
        "separated": peak_b["ci"][0] > b_at_a["ci"][1] and peak_a["ci"][0] > a_at_b["ci"][1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workdir", default="runs")
    ap.add_argument("--first", default=None)
    ap.add_argument("--then", default=None)
    ap.add_argument("--run", action="store_true", help="run the pipeline of each seed first")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out"))
    args = ap.parse_args()
    workdir = Path(args.workdir)
    task = args.preset.split("-")[0]
    first, then = (args.first, args.then) if args.first else DEFAULT_PAIRS[task]
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {}
    for seed in seeds:
        if args.run:
            cmd = [sys.executable, "-m", "inversescope.flows.cli", "run", args.preset]
            cmd += ["--workdir", str(workdir), "--set", f"seed={seed}"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        path, run = newest_result(workdir, args.preset, seed)
        results = pl.read_parquet(path / "results.parquet")
        curves = {f: per_layer(results, f) for f in (first, then)}
        per_seed[seed] = {
            "fcr": str(path),
            "n_examples": run["sample"]["n_examples"],
            "samples_per_example": run["sample"]["samples_per_example"],
            "refusal_rate_mean": float(results["refusal_rate"].mean()),
            "curves": curves,
            **ordering(curves[first], curves[then]),
        }
    result = {
        "preset": args.preset,
        "first": first,
        "then": then,
        "seeds": per_seed,
        "then_after_first_in_every_seed": all(s["then_after_first"] for s in per_seed.values()),
        "separated_in_every_seed": all(s["separated"] for s in per_seed.values()),
    }
    write_result(result, Path(args.out) / f"fcr_orderings_{args.preset}.json")
    for seed, s in per_seed.items():
        line = " ".join(
            f"{f}:" + ",".join(f"{r['fcr']:.2f}" for r in s["curves"][f]) for f in (first, then)
        )
        print(
            f"seed {seed}: {line} | peaks {s['first_peak_layer']} -> {s['then_peak_layer']} "
            f"separated={s['separated']}"
        )


if __name__ == "__main__":
    main()
