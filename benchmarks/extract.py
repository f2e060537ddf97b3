"""Extraction throughput against a bare forward pass over the same batches, in one run.

    python benchmarks/extract.py [--preset ioi-tiny] [--workdir runs] [--repeats 3]

Builds (or reuses) the preset's prior and target artifacts, then times over the same
batches of train prompts: (a) a bare forward pass of the full model, (b) site reading with
nnsight (stopping after the deepest site), (c) the whole extract stage body into a temporary
Zarr store. Writes benchmarks/out/extract.json.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch
from _common import best_of, write_result

from inversescope.config import load_run_config
from inversescope.core.extract import SiteReader
from inversescope.core.models import pick_device
from inversescope.extraction import extract_to_store
from inversescope.flows.stage import run_keys, run_stage
from inversescope.storage.artifacts import ArtifactStore
from inversescope.storage.layout import load_target, read_split, target_prefix
from inversescope.tasks import task_renderer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--workdir", default="runs")
    ap.add_argument("--rows", type=int, default=4096, help="train prompts timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "extract.json"))
    args = ap.parse_args()

    run = load_run_config(args.preset)
    store = ArtifactStore(args.workdir)
    keys = run_keys(run, ("prior", "target"))
    prior = store.require("prior", run_stage("prior", run, args.workdir, keys).key)
    target = store.require("target", run_stage("target", run, args.workdir, keys).key)
    device = pick_device(run.device)
    model, tokenizer = load_target(target, device)
    texts = read_split(prior, "train")["text"].to_list()[: args.rows]
    bs = run.extract.batch_size
    batches = [texts[i : i + bs] for i in range(0, len(texts), bs)]
    render = task_renderer(run.task, tokenizer, target_prefix(target))
    reader = SiteReader(model, tokenizer, run.extract.sites, render=render)
    encoded = [reader.encode(b) for b in batches]

    @torch.no_grad()
    def bare():
        for enc in encoded:
            model(**enc)

    def read_sites():
        for b in batches:
            reader.read(b)

    def whole_stage():
        with tempfile.TemporaryDirectory() as tmp:
            extract_to_store(
                model, tokenizer, {"train": texts}, run.extract, Path(tmp), "bench", render=render
            )

    bare(), read_sites()  # warm-up
    t_bare = best_of(bare, args.repeats)
    t_read = best_of(read_sites, args.repeats)
    t_stage = best_of(whole_stage, args.repeats)
    n = len(texts)
    result = {
        "preset": args.preset,
        "device": device,
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "rows": n,
        "batch_size": bs,
        "sites": len(run.extract.sites),
        "bare_forward_rows_per_s": n / t_bare,
        "site_read_rows_per_s": n / t_read,
        "extract_stage_rows_per_s": n / t_stage,
        "site_read_over_bare": t_bare / t_read,
        "extract_stage_over_bare": t_bare / t_stage,
        "note": "ratios are throughput relative to the bare forward pass (>1 is faster); the bare "
        "pass runs all layers, extraction tokenizes inside and stops after the deepest site",
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
