"""Where a training step's time goes, for each trained stage of a preset (target, backbone,
controls): data (tokenising a batch, reading activations, drawing the training noise), forward,
backward, the optimiser, and how much of forward + backward is spent outside torch's operators
(Python, module calls, autograd bookkeeping); the FLOP rate of forward + backward + optimiser;
the cost of torch's deterministic algorithms; each at several batch sizes and thread counts.

    python benchmarks/profile_training.py [--preset ioi-tiny] [--batches 64,256]
        [--threads 1,2] [--steps 12] [--length-groups 8] [--ops 20] [--kernels]
        [--precisions float32,bfloat16]
        [--out benchmarks/out/profile_training.json]

Models are built and trained as the stages do it (the preset's shapes, random weights: a step
costs the same whatever the weights; eager attention on CPU, the fused AdamW, deterministic
algorithms without their NaN fill of new tensors); texts are the task's own prompts and
activations random rows of the site width, read through the controls' own batch reader.
``--length-groups G`` adds rows of the controls step with its batches sorted by length in runs
of G batches (``controls.length_groups``). ``--ops N`` adds each row's N operators of most self
time over 10 more whole steps (torch's profiler, which adds its own overhead: shares, not
times, compare across rows). ``--kernels`` times the step's matrix products alone, in float32
and bfloat16, and both forms of GELU, at batch × the prompts' median length rows (a
length-sorted batch). ``--precisions`` adds the deterministic rows again for each precision
listed besides float32, the forward pass under autocast as ``TrainConfig.precision`` runs it.
Every step figure is the median over ``--steps`` steps
after two warm-up steps, in this one process, one configuration after another.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from inversescope.config import load_run_config
from inversescope.core.lm_training import TextBatches, lm_lengths
from inversescope.core.methods import method_for
from inversescope.core.models import build_tiny_gpt2, prefer_fast_attention
from inversescope.core.pairs import ActivationBatches
from inversescope.core.tokenizer import train_bpe_tokenizer
from inversescope.tasks import PriorOptions, load_task


def _texts(run, n: int) -> list[str]:
    task = load_task(run.task)
    train, _ = task.generate_prior(n, 1, run.seed, PriorOptions())
    return [r["text"] + r.get("answer", "") for r in train]


def _models(run, tokenizer, texts):
    """(stage, build model, batches(batch_size)) for each trained stage of ``run``."""
    eos = tokenizer.eos_token_id
    d_site = run.target.arch.d_model
    sites = run.sample_sites

    def target():
        return build_tiny_gpt2(run.target.arch, len(tokenizer), eos)

    def backbone():
        return build_tiny_gpt2(run.backbone.arch, len(tokenizer), eos)

    def controls():
        method = method_for(run.controls)
        return method.build(backbone(), sites, d_site)

    rows = np.random.default_rng(0).standard_normal((len(texts), d_site), dtype=np.float32)
    chunk = run.extract.chunk_rows
    method = method_for(run.controls)

    def control_batches(b, length_groups=None):
        noise = method.training_noise(run.kernel, d_site, run.seed)
        return ActivationBatches(
            lambda site, start, stop: rows[start:stop],
            len(texts),
            chunk,
            sites,
            texts,
            tokenizer,
            b,
            run.seed,
            noise,
            None,
            length_groups,
        )

    return [
        ("target", target, lambda b: TextBatches(texts, tokenizer, b, run.seed)),
        ("backbone", backbone, lambda b: TextBatches(texts, tokenizer, b, run.seed)),
        ("controls", controls, control_batches),
    ]


def _time(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def top_operators(step, n: int, steps: int = 10) -> list[dict]:
    """The ``n`` operators of most self time over ``steps`` calls of ``step`` (torch's
    profiler), per step: milliseconds, calls and share of the profiled time."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [
        {
            "op": e.key,
            "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "calls_per_step": e.count / steps,
            "share": e.self_cpu_time_total / total,
        }
        for e in ranked
    ]


def kernels(threads: int, rows: int, d: int, vocab: int, repeats: int = 50) -> list[dict]:
    """Matrix products of a step's shapes (``rows`` positions, width ``d``: the attention's
    input and output maps, the MLP's, the LM head over ``vocab`` tokens) in float32 and
    bfloat16, and the two forms of GELU on the MLP's hidden state; each the mean of ``repeats``
    calls."""
    torch.set_num_threads(threads)

    def mean_s(fn) -> float:
        for _ in range(5):
            fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats

    out = []
    for m, k, n in [
        (rows, d, 3 * d),
        (rows, d, d),
        (rows, d, 4 * d),
        (rows, 4 * d, d),
        (rows, d, vocab),
    ]:
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            s = mean_s(lambda a=a, b=b: a @ b)
            out.append(
                {
                    "op": f"mm {m}x{k}x{n} {dtype}",
                    "ms": 1e3 * s,
                    "gflop_per_s": 2 * m * k * n / s / 1e9,
                }
            )
    x = torch.randn(rows, 4 * d)
    for form in ("tanh", "none"):
        s = mean_s(lambda f=form: torch.nn.functional.gelu(x, approximate=f))
        out.append({"op": f"gelu approximate={form} {rows}x{4 * d}", "ms": 1e3 * s})
    return out


def profile_step(
    build,
    batches,
    lr: float,
    steps: int,
    deterministic: bool,
    ops: int = 0,
    precision: str = "float32",
) -> dict:
    torch.manual_seed(0)
    low = precision == "bfloat16"

    def forward(b):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            return model(**b).loss

    model = build()
    prefer_fast_attention(model)  # as train_causal_lm
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # as flows.stage.seeded
    parts: dict[str, list[float]] = {"data": [], "forward": [], "backward": [], "optimiser": []}
    for i in range(steps + 2):
        t_data, batch = _time(lambda: next(batches))
        t_fwd, loss = _time(lambda b=batch: forward(b))
        t_bwd, _ = _time(loss.backward)

        def optimise():
            opt.step()
            opt.zero_grad(set_to_none=True)

        t_opt, _ = _time(optimise)
        if i >= 2:
            for v, t in zip(parts.values(), (t_data, t_fwd, t_bwd, t_opt), strict=True):
                v.append(t)
    operators = []
    if ops:

        def whole_step():
            forward(next(batches)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        operators = top_operators(whole_step, ops)
    torch.use_deterministic_algorithms(False)
    torch.utils.deterministic.fill_uninitialized_memory = True
    med = {k: statistics.median(v) for k, v in parts.items()}
    # FLOPs of one step (forward + backward), counted by torch; the optimiser's ~12 per weight
    batch = next(batches)
    with FlopCounterMode(display=False) as counter:
        forward(batch).backward()
    opt.zero_grad(set_to_none=True)
    n_params = sum(p.numel() for p in params)
    flops = counter.get_total_flops() + 12 * n_params
    # time inside torch's operators during forward + backward (profiler), the rest is Python
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        forward(batch).backward()
        wall = time.perf_counter() - t0
    opt.zero_grad(set_to_none=True)
    # self time of the outermost operators (dispatcher-level aten ops that no other op nests)
    ops = sum(
        e.cpu_time_total
        for e in prof.events()
        if e.cpu_parent is None and e.name.startswith("aten")
    )
    autograd = sum(
        e.cpu_time_total
        for e in prof.events()
        if e.cpu_parent is None and "autograd" in e.name.lower()
    )
    inside = (ops + autograd) / 1e6
    step = sum(med.values())
    tokens = int(batch["attention_mask"].sum())
    return {
        **{f"{k}_ms": 1e3 * v for k, v in med.items()},
        "step_ms": 1e3 * step,
        "steps_per_s": 1 / step,
        "tokens_per_batch": tokens,
        "positions_per_batch": int(batch["input_ids"].numel()),
        "examples_per_s": len(batch["input_ids"]) / step,
        "gflop_per_step": flops / 1e9,
        "gflop_per_s": flops / 1e9 / (step - med["data"]),
        "outside_ops_share": max(0.0, 1 - inside / wall),
        "trainable_parameters": n_params,
        "top_operators": operators,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--stages", default="target,backbone,controls")
    ap.add_argument(
        "--length-groups", type=int, default=None, help="also the controls step, length-sorted"
    )
    ap.add_argument(
        "--ops", type=int, default=0, help="also the N operators of most self time (profiler)"
    )
    ap.add_argument(
        "--kernels", action="store_true", help="also fp32/bf16 matrix products and GELU forms"
    )
    ap.add_argument(
        "--precisions", default="float32", help="also these step precisions (bfloat16 autocast)"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "profile_training.json"))
    args = ap.parse_args()
    run = load_run_config(args.preset, args.overrides)
    texts = _texts(run, 4096)
    tokenizer = train_bpe_tokenizer(texts, run.target.arch.vocab_size)
    wanted = args.stages.split(",")
    rows = []
    for stage, build, batches in _models(run, tokenizer, texts):
        if stage not in wanted:
            continue
        lr = getattr(run, stage).train.lr
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            for b in [int(x) for x in args.batches.split(",")]:
                groups_of = [None]
                if stage == "controls" and args.length_groups:
                    groups_of.append(args.length_groups)
                arms = [(True, None, "float32"), (False, None, "float32")]
                arms += [(True, g, "float32") for g in groups_of[1:]]
                for precision in args.precisions.split(","):
                    if precision != "float32":
                        arms += [(True, g, precision) for g in groups_of]
                for det, groups, precision in arms:
                    it = batches(b) if groups is None else batches(b, groups)
                    r = profile_step(build, it, lr, args.steps, det, args.ops, precision)
                    row = {"stage": stage, "threads": threads, "batch": b, "deterministic": det}
                    rows.append({**row, "length_groups": groups, "precision": precision, **r})
                    print(
                        f"{stage:9s} threads {threads} batch {b:4d} det {det!s:5s} "
                        f"groups {groups} {precision}: {r['step_ms']:7.1f} ms/step (data "
                        f"{r['data_ms']:.1f}, fwd {r['forward_ms']:.1f}, bwd "
                        f"{r['backward_ms']:.1f}, opt {r['optimiser_ms']:.1f}), "
                        f"{r['examples_per_s']:6.0f} ex/s, {r['gflop_per_s']:5.1f} GFLOP/s, "
                        f"outside ops {100 * r['outside_ops_share']:.0f} %",
                        flush=True,
                    )
                    for o in r["top_operators"]:
                        print(
                            f"    {o['op']:45s} {o['ms_per_step']:7.2f} ms/step "
                            f"{o['calls_per_step']:6.1f} calls {100 * o['share']:5.1f} %"
                        )
    extra = {}
    if args.kernels:
        positions = int(statistics.median(lm_lengths(tokenizer, texts)))
        arch = run.target.arch
        extra["kernels"] = []
        for threads in [int(t) for t in args.threads.split(",")]:
            for b in [int(x) for x in args.batches.split(",")]:
                for k in kernels(threads, b * positions, arch.d_model, arch.vocab_size):
                    extra["kernels"].append({"threads": threads, "batch": b, **k})
                    rate = f" {k['gflop_per_s']:6.1f} GFLOP/s" if "gflop_per_s" in k else ""
                    print(f"threads {threads} batch {b}: {k['op']:40s} {k['ms']:7.3f} ms{rate}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"torch": torch.__version__, "rows": rows, **extra}, indent=1)
    )


if __name__ == "__main__":
    main()
