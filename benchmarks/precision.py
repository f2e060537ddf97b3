"""The controls stage's steps per second in float32 and in bfloat16 autocast
(``controls.train.precision``), measured in one process, the precisions alternating.

    python benchmarks/precision.py --workdir runs [--preset ioi-tiny] [--set k=v ...]
        [--steps 300] [--rounds 2] [--out benchmarks/out/precision.json]

Needs a workdir where the preset's run (with the same ``--set``) has built prior, extract and
backbone (``inversescope run ioi-tiny`` leaves one). Each round builds the controls stage twice
with its own code (``flows.stage_controls.build``: the trained backbone, the extracted
activations, the preset's pair options, torch's deterministic algorithms as in a run) for
``--steps`` steps, once per precision, into a scratch directory, and times the whole build:
a fresh model from the same seed, loading included. A benchmark of the step alone
(``profile_training.py --precisions``) runs on random weights and shorter; this one is the
stage as a run trains it. The ratio is bfloat16 over float32 steps per second, per round and
median; on a CPU without AMX bfloat16 is emulated (``precision: auto`` keeps float32 there).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import keys_with_upstream, write_result

from inversescope.config import load_run_config
from inversescope.flows import stage_controls
from inversescope.flows.stage import StageContext, seeded
from inversescope.storage.artifacts import ArtifactStore


def timed_build(run, store: ArtifactStore, keys: dict[str, str], steps: int, **train):
    """Seconds of one controls build of ``steps`` steps (no checkpoints), ``train`` replacing
    fields of the preset's ``controls.train`` (``precision``, ``batch_size``)."""
    train = run.controls.train.model_copy(update={**train, "steps": steps, "checkpoint_every": 0})
    r = run.model_copy(update={"controls": run.controls.model_copy(update={"train": train})})
    inputs = {name: store.require(name, keys[name]) for name in stage_controls.INPUTS}
    with tempfile.TemporaryDirectory() as out:
        ctx = StageContext(run=r, inputs=inputs, out=Path(out), key="bench", workdir=store.workdir)
        t0 = time.perf_counter()
        with seeded(stage_controls, r.seed):
            metrics = stage_controls.build(ctx)
        return time.perf_counter() - t0, metrics


def controls_inputs(workdir: str, preset: str, overrides: list[str]):
    """``(run, store, keys)`` of the controls stage's inputs in ``workdir``: artifacts of the
    same config built by another checkout count too (their code key differs). Exits naming
    what is missing."""
    run = load_run_config(preset, overrides)
    keys = keys_with_upstream(run, stage_controls.INPUTS, workdir, workdir)
    store = ArtifactStore(workdir)
    missing = [n for n in stage_controls.INPUTS if store.lookup(n, keys[n]) is None]
    if missing:
        raise SystemExit(
            f"{workdir}: no {', '.join(missing)} artifact of {preset} with these "
            f"--set values; run `inversescope run {preset}` there first"
        )
    return run, store, keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs")
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "precision.json"))
    args = ap.parse_args()
    import torch  # deferred: --help answers without it

    run, store, keys = controls_inputs(args.workdir, args.preset, args.overrides)
    rounds = []
    for i in range(args.rounds):
        row = {}
        for precision in ("float32", "bfloat16"):
            seconds, metrics = timed_build(run, store, keys, args.steps, precision=precision)
            row[precision] = {
                "seconds": seconds,
                "steps_per_s": args.steps / seconds,
                "held_out_loss": metrics["held_out_loss"],
                "ran_in": metrics["precision"],
            }
            print(
                f"round {i} {precision:8s}: {seconds:6.1f} s, {args.steps / seconds:5.2f} "
                f"steps/s, held-out loss {metrics['held_out_loss']:.4f}",
                flush=True,
            )
        row["ratio"] = row["bfloat16"]["steps_per_s"] / row["float32"]["steps_per_s"]
        print(f"round {i}: bfloat16 / float32 = {row['ratio']:.2f}x", flush=True)
        rounds.append(row)
    result = {
        "preset": args.preset,
        "overrides": args.overrides,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "rounds": rounds,
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
    }
    print(f"median bfloat16 / float32: {result['median_ratio']:.2f}x")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
