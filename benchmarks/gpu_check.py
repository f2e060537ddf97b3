"""One-command GPU check at the paper's sizes, random weights, and the projected GPU-hours of the
paper's IOI experiment.

    python benchmarks/gpu_check.py [--out benchmarks/out/gpu_check.json]  # CUDA, < 8 min, H100
    python benchmarks/gpu_check.py --tiny                 # the same code, CPU, tiny shapes

Measures, with random weights (no hub):
- extraction: a GPT-2-small target (bfloat16) reading its 144 head sites, rows/s against a bare
  forward pass over the same batches; a Llama-3-8B-shaped target truncated at the deepest site
  of ``refusal-llama3-8b`` (its 32 attention layers: all 32 blocks), rows/s likewise;
- controls training: GPT-2-small backbone (float32) + 144 site encoders + 12 control layers of
  32 x 64 heads (``--value-form``, default the ``ioi-gpt2`` preset's), the ``ioi-gpt2`` batch;
  steps/s and peak memory against ``inversescope.core.sizing``'s estimate;
- sampling: the conditioned generator's samples/s against the backbone's own ``generate`` (same
  batch, same length), and the target's re-reading of samples (rows/s at one site).

Projection (``projection`` in the JSON): seconds of each stage of the paper's IOI experiment from
the measured rates: 105k prompts extracted (100k train + 5k test), 5k backbone fine-tuning steps
(at the controls rate: an upper bound), 20k controls steps, 144 sites x 100 examples x 32 samples
generated and re-read. Goal: at most 1 H100-hour. Zarr writes and Parquet I/O are not included.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import torch
from _common import generate_baseline, write_result
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from inversescope.config import load_run_config
from inversescope.core.config import TrainConfig
from inversescope.core.extract import SiteReader
from inversescope.core.generator import ConditionalGenerator
from inversescope.core.lm_training import lm_batch, train_causal_lm
from inversescope.core.sampling import sample_tokens
from inversescope.core.sites import all_sites
from inversescope.core.sizing import Shape, packaged_config, training_bytes
from inversescope.core.tokenizer import train_bpe_tokenizer
from inversescope.tasks import ioi

IOI_PAPER = {"prompts": 105_000, "backbone_steps": 5_000, "controls_steps": 20_000}
IOI_PAPER["samples"] = 144 * 100 * 32


@dataclass(frozen=True)
class Sizes:
    """The shapes and amounts of one check (paper-sized on CUDA, tiny on CPU)."""

    gpt2: GPT2Config
    llama_layers: int  # blocks of the Llama-3-8B-shaped target (deepest site + 1)
    llama_tiny: bool
    extract_rows: int
    extract_batch: int
    llama_rows: int
    llama_batch: int
    controls_batch: int
    controls_steps: int
    sample_batch: int
    new_tokens: int
    n_heads: int
    d_head: int
    value_form: str = "per_head"


def sizes(tiny: bool) -> Sizes:
    if tiny:
        gpt2 = GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=1000, n_positions=256)
        return Sizes(gpt2, 2, True, 64, 32, 16, 8, 8, 4, 8, 8, 4, 8)
    gpt2 = GPT2Config()  # GPT-2 small: 12 x 12 heads, 768 wide, 50257 tokens
    return Sizes(gpt2, 32, False, 8192, 256, 512, 64, 32, 60, 512, 40, 32, 64)


def llama_config(s: Sizes):
    config = packaged_config(
        "meta-llama/Meta-Llama-3-8B-Instruct",
        Path(str(resources.files("inversescope.tasks") / "model_configs")),
    )
    config.num_hidden_layers = s.llama_layers  # truncated after the deepest site
    if s.llama_tiny:
        config.update(
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                vocab_size=1000,
            )
        )
    return config


def timed(fn, device: str, repeats: int = 1) -> float:
    """Seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def check_extraction(model, tok, sites, texts, batch, device) -> dict:
    reader = SiteReader(model, tok, sites)
    batches = [texts[i : i + batch] for i in range(0, len(texts), batch)]

    def ours():
        for b in batches:
            reader.read(b)

    @torch.no_grad()
    def bare():
        for b in batches:
            model(**reader.encode(b))

    t_ours, t_bare = timed(ours, device), timed(bare, device)
    return {
        "sites": len(sites),
        "rows": len(texts),
        "batch": batch,
        "rows_per_s": len(texts) / t_ours,
        "bare_forward_rows_per_s": len(texts) / t_bare,
        "ours_over_bare": t_bare / t_ours,
    }


def check_controls(backbone, tok, sites, texts, s: Sizes, device: str) -> dict:
    d_site = backbone.config.n_embd
    gen = ConditionalGenerator(
        backbone, sites, d_site, s.n_heads, s.d_head, value_form=s.value_form
    )
    gen.to(device)
    g = torch.Generator().manual_seed(0)
    fixed = []
    for i in range(4):
        rows = texts[i * s.controls_batch : (i + 1) * s.controls_batch]
        batch = lm_batch(tok, rows)
        batch["z"] = torch.randn(len(rows), d_site, generator=g)  # (B, d)
        batch["site_idx"] = torch.randint(0, len(sites), (len(rows),), generator=g)  # (B,)
        fixed.append(batch)

    def batches():
        while True:
            yield from fixed

    schedule = TrainConfig(
        steps=s.controls_steps, batch_size=s.controls_batch, lr=1e-5, warmup=1, eval_every=10**9
    )
    train_causal_lm(gen, batches(), schedule.model_copy(update={"steps": 2}), stage="warm-up")
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train_causal_lm(gen, batches(), schedule, stage="controls")
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    total = sum(p.numel() for p in gen.parameters())
    trainable = sum(p.numel() for p in gen.parameters() if p.requires_grad)
    seq = max(b["input_ids"].shape[1] for b in fixed)
    estimate = training_bytes(
        total, trainable, Shape.of(backbone.config), s.controls_batch, seq, s.n_heads, s.d_head
    )
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return {
        "batch": s.controls_batch,
        "value_form": s.value_form,
        "seq_tokens": seq,
        "steps": s.controls_steps,
        "steps_per_s": s.controls_steps / seconds,
        "params": total,
        "trainable_params": trainable,
        "peak_memory_bytes": peak,
        "estimated_peak_bytes": sum(estimate.values()),
        "estimate_terms": estimate,
    }, gen


def check_sampling(gen, backbone, target, tok, site: str, s: Sizes, device: str) -> dict:
    eos = tok.eos_token_id
    b = s.sample_batch
    z = torch.randn(b, backbone.config.n_embd, device=device)  # (B, d)
    site_idx = torch.full((b,), gen.sites.index(site), device=device)  # (B,)
    gen.eval()

    hf_generate = generate_baseline(backbone, b, s.new_tokens, eos, device)

    @torch.no_grad()
    def ours():
        with gen.conditioned(z, site_idx):
            return sample_tokens(backbone, b, eos, s.new_tokens, stop_at_eos=False)

    t_hf, t_ours = timed(hf_generate, device), timed(ours, device)
    texts = tok.batch_decode(ours(), skip_special_tokens=True)
    reader = SiteReader(target, tok, [site])
    t_read = timed(lambda: reader.read(texts), device)
    return {
        "batch": b,
        "new_tokens": s.new_tokens,
        "samples_per_s": b / t_ours,
        "generate_samples_per_s": b / t_hf,
        "ours_over_generate": t_hf / t_ours,
        "reread_rows_per_s": b / t_read,
    }


def project(result: dict) -> dict:
    """Seconds per stage of the paper's IOI experiment from the measured rates."""
    extract = result["extract_gpt2"]["rows_per_s"]
    controls = result["controls"]["steps_per_s"]
    sample = result["sampling"]
    seconds = {
        "extract": IOI_PAPER["prompts"] / extract,
        "backbone": IOI_PAPER["backbone_steps"] / controls,
        "controls": IOI_PAPER["controls_steps"] / controls,
        "sample_generate": IOI_PAPER["samples"] / sample["samples_per_s"],
        "sample_reread": IOI_PAPER["samples"] / sample["reread_rows_per_s"],
    }
    hours = sum(seconds.values()) / 3600
    return {"experiment": IOI_PAPER, "seconds": seconds, "gpu_hours": hours, "goal_hours": 1.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (a smoke test)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "gpu_check.json"))
    ap.add_argument(
        "--value-form", choices=("per_head", "projected"), default=None, help="control values"
    )
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device; this check needs one GPU (run with --tiny for the CPU "
            "smoke test of the same code)",
            file=sys.stderr,
        )
        return 2
    device = "cpu" if args.tiny else "cuda"
    form = args.value_form or load_run_config("ioi-gpt2").controls.generator.value_form
    s = replace(sizes(args.tiny), value_form=form)
    t_start = time.perf_counter()
    torch.manual_seed(0)
    prompts, _ = ioi.generate_prior(max(s.extract_rows, 4 * s.controls_batch), 10, seed=0)
    texts = [r["text"] for r in prompts]
    tok = train_bpe_tokenizer(texts, 1000)
    result: dict = {"tiny": args.tiny, "device": device}
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    sites = all_sites(s.gpt2.n_layer, s.gpt2.n_head, layers=False)
    with torch.device(device):
        target = GPT2LMHeadModel(s.gpt2).to(torch.bfloat16 if device == "cuda" else torch.float32)
    target.eval()
    result["extract_gpt2"] = check_extraction(
        target, tok, sites, texts[: s.extract_rows], s.extract_batch, device
    )
    with torch.device(device):
        backbone = GPT2LMHeadModel(s.gpt2).eval()  # float32: it trains
    controls, gen = check_controls(backbone, tok, sites, texts, s, device)
    result["controls"] = controls
    result["sampling"] = check_sampling(gen, backbone, target, tok, sites[-1], s, device)
    del gen, backbone
    config = llama_config(s)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built directly in its dtype: no float32 copy of 7.5 B
    try:
        with torch.device(device):
            llama = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    long = [" ".join(texts[i : i + 3]) for i in range(0, 3 * s.llama_rows, 3)]  # ~60 tokens
    layer_sites = all_sites(config.num_hidden_layers, 1, heads=False)
    result["extract_llama3_8b_shape"] = {
        "layers": config.num_hidden_layers,
        "params": sum(p.numel() for p in llama.parameters()),
        **check_extraction(llama, tok, layer_sites, long, s.llama_batch, device),
    }
    if device == "cuda":
        result["peak_memory_bytes_overall"] = torch.cuda.max_memory_allocated()
    result["projection"] = project(result)
    result["seconds"] = time.perf_counter() - t_start
    write_result(result, args.out)
    hours = result["projection"]["gpu_hours"]
    print(f"projected GPU-hours of the paper's IOI experiment: {hours:.2f} (goal <= 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
