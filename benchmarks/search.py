"""The search for InverseScope's edge: refusal rate of named arms (sets of config overrides),
each with its learning curve, on the same sites, test examples, samples and ε.

    python benchmarks/search.py [--preset ioi-tiny] [--workdir runs] [--set k=v ...]
        --arm NAME=k=v;k=v ... [--steps 1500,3000] [--methods inversescope,inversionview]
        [--upstream OTHER_WORKDIR] [--fcr] [--out benchmarks/out/search.json]

Every arm runs the stages up to ``sample`` with the preset, the common ``--set`` overrides, its
own overrides (``;``-separated; an arm with none, ``NAME=``, is the preset itself), one method
and one number of controls steps, for each method and step count given. Cached artifacts are
reused, so a rerun costs seconds and an arm that changes only sampling (``sample.temperature``)
trains nothing. ``--upstream`` reuses prior, target, extract and backbone artifacts of another
workdir with the same configs and inputs (``_common.keys_with_upstream``); an arm that changes
one of those stages (``prior.n_train``) builds its own. The keys of every arm are computed at
the start, so source edited while the search runs cannot split it across two keys. Results
are written after every point, per arm, method and step count: mean, median and worst-site
refusal rate, per-site rates, the controls' held-out loss (final and per eval) and the stage
times. ``--fcr`` also runs ``label`` and ``fcr`` on each point's samples, so that
``fcr_orderings.py`` can read the FCR of the arm's artifacts.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from _common import keys_with_upstream, rate_summary, sample_refusal_rates

from inversescope.config import load_run_config
from inversescope.flows.stage import run_keys, run_stage
from inversescope.storage.artifacts import ArtifactStore

UNTIL = ("prior", "target", "extract", "backbone", "controls", "sample")
WITH_FCR = (*UNTIL, "label", "fcr")


def parse_arm(spec: str) -> tuple[str, list[str]]:
    name, sep, rest = spec.partition("=")
    if not sep or not name:
        raise SystemExit(f"--arm {spec!r}: expected NAME=k=v;k=v (or NAME= for the preset)")
    return name, [o for o in rest.split(";") if o]


def point(store: ArtifactStore, run, keys: dict[str, str], workdir: str) -> dict:
    """Run the stages under ``keys`` (up to ``sample``, or ``fcr`` where ``keys`` has it); the
    refusal rates and training figures."""
    t0 = time.perf_counter()
    status = {n: run_stage(n, run, workdir, keys).status for n in WITH_FCR if n in keys}
    controls = store.require("controls", keys["controls"]).manifest
    rates = sample_refusal_rates(store, run, keys["sample"])
    metrics = controls["metrics"]
    return {
        **rate_summary(rates),
        "held_out_loss": metrics.get("held_out_loss"),
        "evals": metrics.get("evals"),
        "stage_seconds": {n: store.require(n, keys[n]).manifest["seconds"] for n in UNTIL},
        "status": status,
        "wall_seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--workdir", default="runs")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--arm", dest="arms", action="append", default=[], help="NAME=k=v;k=v")
    ap.add_argument("--steps", default="1500", help="comma-separated controls steps")
    ap.add_argument("--methods", default="inversescope", help="comma-separated methods")
    ap.add_argument("--upstream", default=None, help="workdir whose upstream artifacts to reuse")
    ap.add_argument("--fcr", action="store_true", help="also run label and fcr")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "search.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    arms = dict(parse_arm(a) for a in args.arms) or {"preset": []}
    steps = [int(s) for s in args.steps.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]

    plan = []  # (arm, method, steps, run, keys): every key before any work
    for name, over in arms.items():
        for method in methods:
            for n in steps:
                run = load_run_config(
                    args.preset,
                    [
                        *args.overrides,
                        *over,
                        f"controls.method={method}",
                        f"controls.train.steps={n}",
                    ],
                )
                names = WITH_FCR if args.fcr else UNTIL
                keys = (
                    keys_with_upstream(run, names, args.upstream, args.workdir)
                    if args.upstream
                    else run_keys(run, names)
                )
                plan.append((name, method, n, run, keys))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "preset": args.preset,
        "overrides": args.overrides,
        "arms": {name: {"overrides": over, "points": []} for name, over in arms.items()},
    }
    store = ArtifactStore(args.workdir)
    for name, method, n, run, keys in plan:
        logging.info("search: arm %s, %s, %d controls steps", name, method, n)
        p = {"method": method, "steps": n, **point(store, run, keys, args.workdir)}
        result["arms"][name]["points"].append(p)
        out.write_text(json.dumps(result, indent=2))
        loss = p["held_out_loss"]
        print(
            f"{name:24s} {method:14s} {n:6d} steps: mean {p['mean']:.3f} median "
            f"{p['median']:.3f} worst {p['worst']:.3f} ({p['worst_site']}) "
            f"held-out loss {'-' if loss is None else f'{loss:.3f}'}",
            flush=True,
        )


if __name__ == "__main__":
    main()
