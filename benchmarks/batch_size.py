"""The controls stage's pairs per second at several batch sizes, for the same number of pairs,
measured in one process, the batch sizes alternating.

    python benchmarks/batch_size.py --workdir runs [--preset ioi-tiny] [--set k=v ...]
        [--batches 64,128] [--pairs 19200] [--rounds 3] [--out benchmarks/out/batch_size.json]

Needs a workdir where the preset's run (with the same ``--set``) has built prior, extract and
backbone (``inversescope run ioi-tiny`` leaves one). Each round builds the controls stage once
per batch size with its own code (``flows.stage_controls.build``: the trained backbone, the
extracted activations, the preset's pair options and precision, torch's deterministic
algorithms as in a run) for ``--pairs / batch`` steps into a scratch directory, and times the
whole build, loading and the final held-out evaluation included. The ratio is pairs per second
at each batch size over the first one's, per round and median. What the batch size does to the
refusal rate is ``search.py``'s to measure (a larger batch trains on the same pairs in fewer
updates).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _common import write_result
from precision import controls_inputs, timed_build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs")
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--batches", default="64,128")
    ap.add_argument("--pairs", type=int, default=19200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "batch_size.json"))
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    bad = [b for b in batches if b < 1 or args.pairs % b]
    if bad:
        raise SystemExit(f"--batches {bad}: each must divide --pairs {args.pairs}")
    import torch  # deferred: --help answers without it

    run, store, keys = controls_inputs(args.workdir, args.preset, args.overrides)
    rounds = []
    for i in range(args.rounds):
        row: dict[str, dict] = {}
        for b in batches:
            steps = args.pairs // b
            seconds, metrics = timed_build(run, store, keys, steps, batch_size=b)
            row[str(b)] = {
                "steps": steps,
                "seconds": seconds,
                "pairs_per_s": args.pairs / seconds,
                "precision": metrics["precision"],
            }
            print(
                f"round {i} batch {b:4d}: {steps} steps, {seconds:6.1f} s, "
                f"{args.pairs / seconds:6.1f} pairs/s ({metrics['precision']})",
                flush=True,
            )
        base = row[str(batches[0])]["pairs_per_s"]
        for b in batches:
            row[str(b)]["ratio"] = row[str(b)]["pairs_per_s"] / base
        print(
            f"round {i}: "
            + ", ".join(f"{b} / {batches[0]} = {row[str(b)]['ratio']:.2f}x" for b in batches[1:]),
            flush=True,
        )
        rounds.append(row)
    result = {
        "preset": args.preset,
        "overrides": args.overrides,
        "pairs": args.pairs,
        "batches": batches,
        "threads": torch.get_num_threads(),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "rounds": rounds,
        "median_ratio": {
            str(b): statistics.median(r[str(b)]["ratio"] for r in rounds) for b in batches
        },
    }
    print("median: " + ", ".join(f"{b}: {result['median_ratio'][str(b)]:.2f}x" for b in batches))
    write_result(result, args.out)


if __name__ == "__main__":
    main()
