"""Sampling throughput against the backbone's own ``generate``, same batch and length, one run.

    python benchmarks/sample.py [--preset ioi-tiny] [--workdir runs] [--batch 256] [--tokens 32]

Builds (or reuses) the preset's artifacts up to ``controls`` (method inversescope), then times:
(a) ``backbone.generate`` (sampling, KV cache, fixed length: no early stop),
(b) our sampling loop on the plain backbone, and (c) our loop on the conditioned generator
(control keys/values computed once per condition). Writes benchmarks/out/sample.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import best_of, generate_baseline, write_result

from inversescope.config import load_run_config
from inversescope.core.models import pick_device
from inversescope.core.sampling import sample_tokens
from inversescope.flows.stage import run_keys, run_stage
from inversescope.storage.activations import ActivationStore
from inversescope.storage.artifacts import ArtifactStore
from inversescope.storage.layout import load_backbone, load_controls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--workdir", default="runs")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "sample.json"))
    args = ap.parse_args()

    run = load_run_config(args.preset, ["controls.method=inversescope"])
    names = ("prior", "target", "extract", "backbone", "controls")
    keys = run_keys(run, names)
    for name in names:
        run_stage(name, run, args.workdir, keys)
    store = ArtifactStore(args.workdir)
    arts = {n: store.require(n, keys[n]) for n in ("extract", "backbone", "controls")}
    device = pick_device(run.device)
    backbone, tokenizer = load_backbone(arts["backbone"], device)
    acts = ActivationStore(arts["extract"].path)
    site = run.sample_sites[0]
    z = torch.from_numpy(acts.read("test", site, 0, 1)).repeat(args.batch, 1).to(device)
    _, gen_model = load_controls(arts["controls"], backbone)
    site_idx = torch.full((args.batch,), gen_model.sites.index(site), device=device)
    eos = tokenizer.eos_token_id

    hf_generate = generate_baseline(backbone, args.batch, args.tokens, eos, device)

    def ours_plain():
        sample_tokens(backbone, args.batch, eos, args.tokens, stop_at_eos=False)

    def ours_conditioned():
        with gen_model.conditioned(z, site_idx):
            sample_tokens(backbone, args.batch, eos, args.tokens, stop_at_eos=False)

    for fn in (hf_generate, ours_plain, ours_conditioned):
        fn()  # warm-up
    t_hf = best_of(hf_generate, args.repeats)
    t_plain = best_of(ours_plain, args.repeats)
    t_cond = best_of(ours_conditioned, args.repeats)
    n_tok = args.batch * args.tokens
    result = {
        "preset": args.preset,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch,
        "new_tokens": args.tokens,
        "generate_tokens_per_s": n_tok / t_hf,
        "ours_backbone_tokens_per_s": n_tok / t_plain,
        "ours_conditioned_tokens_per_s": n_tok / t_cond,
        "conditioned_over_generate": t_hf / t_cond,
        "plain_loop_over_generate": t_hf / t_plain,
        "note": "ratios are throughput relative to backbone.generate (>1 is faster)",
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
