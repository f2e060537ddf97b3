"""What the OpenMP pools of earlier stages cost a training step, and what building each stage
in a thread of its own (``core.threads.in_own_thread``) gives back.

    python benchmarks/openmp_pools.py [--preset ioi-tiny] [--stage controls] [--earlier 3]
        [--steps 40] [--repeats 3] [--out benchmarks/out/openmp_pools.json]

A local run builds each stage in a worker thread of Prefect's pool, and those threads live as
long as the flow. GNU OpenMP, which torch's CPU kernels run on, keeps a pool of worker threads
for every thread that ever ran a parallel region. Three arms train the preset's ``--stage``
model (built as ``profile_training.py`` builds it) for ``--steps`` steps in a long-lived worker
thread, as a local run does:

- ``alone``: nothing ran torch before;
- ``stale``: ``--earlier`` other long-lived workers first ran torch work (a matrix product, the
  stand-in for target, extract and backbone) and stay alive, each keeping its pool;
- ``own_thread``: the same earlier work and the training each ran through ``in_own_thread``,
  as ``flows.stage.run_stage`` now builds.

The arms alternate, ``--repeats`` times, in one process each (the pools cannot be undone in a
process); the figure is the median step rate per arm and its ratio to ``alone``, with the
process's native thread count at the start of training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ARMS = ("alone", "stale", "own_thread")


def _arm(arm: str, preset: str, stage: str, earlier: int, steps: int) -> dict:
    import profile_training as pt
    import torch

    from inversescope.config import load_run_config
    from inversescope.core.threads import in_own_thread
    from inversescope.core.tokenizer import train_bpe_tokenizer

    run = load_run_config(preset, [])
    texts = pt._texts(run, 4096)
    tokenizer = train_bpe_tokenizer(texts, run.target.arch.vocab_size)
    build, batches = {s: (b, bt) for s, b, bt in pt._models(run, tokenizer, texts)}[stage]
    lr = getattr(run, stage).train.lr

    def earlier_work() -> float:
        a = torch.randn(512, 512)
        return float((a @ a).sum())

    def train() -> dict:
        torch.manual_seed(0)
        model = build().train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        it = batches(64)
        threads = len(os.listdir("/proc/self/task"))
        times = []
        for _ in range(steps + 3):
            batch = next(it)
            t0 = time.perf_counter()
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        return {"steps_per_s": 1 / statistics.median(times[3:]), "native_threads": threads}

    wrap = in_own_thread if arm == "own_thread" else (lambda fn: fn())
    workers = [ThreadPoolExecutor(1) for _ in range(earlier)]  # alive until the end
    if arm != "alone":
        for w in workers:
            w.submit(wrap, earlier_work).result()
    with ThreadPoolExecutor(1) as trainer:
        out = trainer.submit(wrap, train).result()
    for w in workers:
        w.shutdown()
    return {"arm": arm, "torch_threads": torch.get_num_threads(), **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--stage", default="controls", choices=("target", "backbone", "controls"))
    ap.add_argument("--earlier", type=int, default=3, help="long-lived workers that ran torch")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # one arm, in a child
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "openmp_pools.json"))
    args = ap.parse_args()
    if args.arm:
        print(json.dumps(_arm(args.arm, args.preset, args.stage, args.earlier, args.steps)))
        return
    rows = []
    for r in range(args.repeats):
        for arm in ARMS:
            cmd = [sys.executable, __file__, "--arm", arm, "--preset", args.preset]
            cmd += ["--stage", args.stage, "--earlier", str(args.earlier)]
            cmd += ["--steps", str(args.steps)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = {"repeat": r, **json.loads(line.strip().splitlines()[-1])}
            rows.append(row)
            print(
                f"repeat {r} {arm:10s}: {row['steps_per_s']:.2f} steps/s, "
                f"{row['native_threads']} native threads at the start of training",
                flush=True,
            )
    rate = {a: statistics.median(x["steps_per_s"] for x in rows if x["arm"] == a) for a in ARMS}
    summary = {a: {"steps_per_s": rate[a], "ratio_to_alone": rate[a] / rate["alone"]} for a in ARMS}
    for a, s in summary.items():
        print(f"{a:10s}: median {s['steps_per_s']:.2f} steps/s, {s['ratio_to_alone']:.2f}x alone")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"config": vars(args), "summary": summary, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
