"""Sample efficiency: refusal rate of inversescope against inversionview and prior sampling.

    python benchmarks/efficiency.py [--preset ioi-tiny] [--workdir runs] [--set k=v ...]
        [--steps 500,1500,3000] [--noise gaussian:0.1,kernel:0,none:0] [--iv-noise 0,0.05,0.1]

Runs the ``sample`` stage of the three methods on the same sites, test examples, number of
samples and ε (the preset's), reusing cached artifacts (a second call costs seconds), and
writes ``efficiency.json`` (per method: mean, median and worst-site refusal rate; ratios
inversescope/inversionview and inversescope/prior) and ``efficiency.png`` (histogram over sites,
like the paper's Figure 5) under ``benchmarks/out/``.
``--steps`` adds a learning curve (refusal against controls training steps, per method);
``--noise`` an ablation of inversescope's training noise (family:scale); ``--iv-noise`` gives
InversionView its own best sampling noise scale: each scale is sampled and the one with the
lowest mean refusal rate stands for inversionview in the comparison (all are reported).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from _common import rate_summary, sample_refusal_rates

from inversescope import plots
from inversescope.config import load_run_config
from inversescope.flows.stage import run_keys, run_stage
from inversescope.storage.artifacts import ArtifactStore

METHODS = ("inversescope", "inversionview", "prior")
UNTIL = ("prior", "target", "extract", "backbone", "controls", "sample")


def sample_run(preset: str, overrides: list[str], workdir: str) -> dict:
    """Run the stages up to ``sample``; return the sample manifest's metrics, the refusal rates
    at the run's ε and the stage times."""
    run = load_run_config(preset, overrides)
    keys = run_keys(run, UNTIL)
    seconds = {}
    for name in UNTIL:
        result = run_stage(name, run, workdir, keys)
        manifest = ArtifactStore(workdir).require(name, result.key).manifest
        seconds[name] = manifest["seconds"]  # build time, also when cached now
    store = ArtifactStore(workdir)
    metrics = store.require("sample", keys["sample"]).manifest["metrics"]
    rates = sample_refusal_rates(store, run, keys["sample"])
    return {**metrics, "refusal_rate_per_site": rates, "stage_seconds": seconds}


def summary(metrics: dict) -> dict:
    return {
        **rate_summary(metrics["refusal_rate_per_site"]),
        "n_samples": metrics["n_samples"],
        "stage_seconds": metrics["stage_seconds"],
    }


def ratios(s: dict) -> dict:
    out = {}
    for other in ("inversionview", "prior"):
        if "inversescope" in s and other in s:
            for stat in ("mean", "worst"):
                den = s[other][stat]
                out[f"{stat}_inversescope_over_{other}"] = (
                    s["inversescope"][stat] / den if den else None
                )
    if "inversescope" in s and "prior" in s:
        per = s["inversescope"]["per_site"]
        out["inversescope_below_prior_on_every_site"] = all(
            per[k] < s["prior"]["per_site"][k] for k in per
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--workdir", default="runs")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", default="", help="comma-separated controls steps for a curve")
    ap.add_argument("--noise", default="", help="comma-separated family:scale ablation")
    ap.add_argument("--iv-noise", default="", help="comma-separated inversionview noise scales")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    methods = {}
    for m in METHODS:
        methods[m] = summary(
            sample_run(args.preset, [*args.overrides, f"controls.method={m}"], args.workdir)
        )
    iv_table = []
    for scale in [float(x) for x in args.iv_noise.split(",") if x]:
        over = [
            *args.overrides,
            "controls.method=inversionview",
            f"controls.inversionview.sample_noise_scale={scale}",
        ]
        s = summary(sample_run(args.preset, over, args.workdir))
        iv_table.append({"iv_noise_scale": scale, **{k: s[k] for k in ("mean", "median", "worst")}})
        if s["mean"] < methods["inversionview"]["mean"]:
            methods["inversionview"] = {**s, "iv_noise_scale": scale}
    result = {
        "preset": args.preset,
        "overrides": args.overrides,
        "methods": methods,
        "ratios": ratios(methods),
    }
    if iv_table:
        result["inversionview_noise"] = iv_table
    if args.steps:
        curve = {}
        for steps in [int(s) for s in args.steps.split(",")]:
            for m in METHODS[:2]:
                s = summary(
                    sample_run(
                        args.preset,
                        [*args.overrides, f"controls.method={m}", f"controls.train.steps={steps}"],
                        args.workdir,
                    )
                )
                curve.setdefault(m, []).append(
                    {"steps": steps, "mean": s["mean"], "worst": s["worst"]}
                )
        result["learning_curve"] = curve
    if args.noise:
        table = []
        for spec in args.noise.split(","):
            family, _, scale = spec.partition(":")
            over = [
                *args.overrides,
                "controls.method=inversescope",
                f"controls.generator.noise.family={family}",
                f"controls.generator.noise.scale={scale or 0}",
            ]
            s = summary(sample_run(args.preset, over, args.workdir))
            table.append(
                {
                    "family": family,
                    "scale": float(scale or 0),
                    "mean": s["mean"],
                    "median": s["median"],
                    "worst": s["worst"],
                }
            )
        result["noise_ablation"] = table
    result["seconds"] = time.perf_counter() - t0
    (out / "efficiency.json").write_text(json.dumps(result, indent=2))
    plots.refusal_histogram({m: s["per_site"] for m, s in methods.items()}, out / "efficiency.png")
    print(json.dumps({k: v for k, v in result.items() if k != "methods"}, indent=2))
    for m, s in methods.items():
        print(
            f"{m:14s} mean {s['mean']:.3f} median {s['median']:.3f} "
            f"worst {s['worst']:.3f} ({s['worst_site']})"
        )


if __name__ == "__main__":
    main()
