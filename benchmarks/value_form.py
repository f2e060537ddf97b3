"""Control-layer value form: refusal rate and controls training time of ``projected`` against
``per_head`` (``controls.generator.value_form``), same preset, steps and seed.

    python benchmarks/value_form.py [--preset ioi-tiny] [--workdir runs] [--set k=v ...]
        [--forms projected,per_head] [--out benchmarks/out/value_form.json]
        [--upstream OTHER_WORKDIR] [--timing-only]

The keys of every run are computed once at the start (``run_keys``), so source edited while
the benchmark runs cannot split it across two keys; the stages before ``controls`` are shared
by both forms. ``--upstream`` reuses the prior, target, extract and backbone artifacts of
another workdir whose manifests record exactly this run's configs and inputs for those stages
(built by another checkout, so their code keys differ): they are copied under their own keys and
the controls and sample keys are derived from them (``_common.keys_with_upstream``). Writes,
per form: mean, median and worst-site refusal rate, the controls stage's wall time, its
held-out loss and its trainable parameters.
The stage times of the two forms run one after the other, so load from other processes falls
on them unevenly; ``step_timing`` therefore also times training steps of both forms on the same
backbone, interleaved (rounds of ``--timing-steps`` steps, form after form), and keeps each
form's fastest round. ``--timing-only`` adds that section to an existing ``--out`` file.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from _common import keys_with_upstream, rate_summary, sample_refusal_rates, write_result

from inversescope.config import RunConfig, load_run_config
from inversescope.flows.stage import run_keys, run_stage
from inversescope.storage.artifacts import ArtifactStore

UNTIL = ("prior", "target", "extract", "backbone", "controls", "sample")
UPSTREAM = UNTIL[:4]


def step_timing(run: RunConfig, store: ArtifactStore, keys: dict, forms: list, steps: int) -> dict:
    """Fastest of 3 interleaved rounds of ``steps`` controls training steps per form (ms/step),
    on the run's backbone and training texts with random conditions."""
    # torch and the core deferred: key computation above must not wait for them
    import torch

    from inversescope.core.lm_training import lm_batch, train_causal_lm
    from inversescope.core.methods import method_for
    from inversescope.storage.layout import load_backbone, read_split

    texts = read_split(store.require("prior", keys["prior"]), "train")["text"].to_list()
    sites = run.sample_sites
    d_site = run.target.arch.d_model
    b = run.controls.train.batch_size
    g = torch.Generator().manual_seed(0)
    tokenizer = load_backbone(store.require("backbone", keys["backbone"]))[1]
    fixed = []
    for i in range(8):
        batch = lm_batch(tokenizer, texts[i * b : (i + 1) * b])
        batch["z"] = torch.randn(b, d_site, generator=g)  # (B, d)
        batch["site_idx"] = torch.randint(0, len(sites), (b,), generator=g)  # (B,)
        fixed.append(batch)

    def batches():
        while True:
            yield from fixed

    best = {f: float("inf") for f in forms}
    schedule = run.controls.train.model_copy(update={"steps": steps, "eval_every": 10**9})
    for _ in range(3):
        for f in forms:
            controls = run.controls.model_copy(
                update={"generator": run.controls.generator.model_copy(update={"value_form": f})}
            )
            backbone, _ = load_backbone(store.require("backbone", keys["backbone"]))
            model = method_for(controls).build(backbone, sites, d_site)
            t0 = time.perf_counter()
            train_causal_lm(model, batches(), schedule, stage=f"timing[{f}]")
            best[f] = min(best[f], (time.perf_counter() - t0) / steps * 1000)
    return {"steps_per_round": steps, "rounds": 3, "ms_per_step": best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--workdir", default="runs")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--forms", default="projected,per_head")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "value_form.json"))
    ap.add_argument("--upstream", default=None, help="workdir whose upstream artifacts to reuse")
    ap.add_argument("--timing-steps", type=int, default=100, help="steps per timing round")
    ap.add_argument("--timing-only", action="store_true", help="add step_timing to --out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    forms = [f for f in args.forms.split(",") if f]
    runs = {
        f: load_run_config(args.preset, [*args.overrides, f"controls.generator.value_form={f}"])
        for f in forms
    }
    store = ArtifactStore(args.workdir)
    if args.timing_only:
        result = json.loads(Path(args.out).read_text())
        up = result["upstream"] or run_keys(runs[forms[0]], UPSTREAM)
        result["step_timing"] = step_timing(runs[forms[0]], store, up, forms, args.timing_steps)
        write_result(result, args.out)
        return
    # one snapshot, before any work
    if args.upstream:
        keys = {
            f: keys_with_upstream(r, UNTIL, args.upstream, args.workdir) for f, r in runs.items()
        }
    else:
        keys = {f: run_keys(r, UNTIL) for f, r in runs.items()}
    result: dict = {
        "preset": args.preset,
        "overrides": args.overrides,
        "upstream": {n: keys[forms[0]][n] for n in UPSTREAM} if args.upstream else None,
        "forms": {},
    }
    for f in forms:
        t0 = time.perf_counter()
        status = {n: run_stage(n, runs[f], args.workdir, keys[f]).status for n in UNTIL}
        controls = store.require("controls", keys[f]["controls"]).manifest
        rates = sample_refusal_rates(store, runs[f], keys[f]["sample"])
        result["forms"][f] = {
            **rate_summary(rates),
            "controls_seconds": controls["seconds"],
            "controls_steps": controls["metrics"]["steps"],
            "held_out_loss": controls["metrics"]["held_out_loss"],
            "trainable_parameters": controls["metrics"]["trainable_parameters"],
            "status": status,
            "wall_seconds": time.perf_counter() - t0,
        }
    result["step_timing"] = step_timing(
        runs[forms[0]], store, keys[forms[0]], forms, args.timing_steps
    )
    write_result(result, args.out)


if __name__ == "__main__":
    main()
