"""Shared by the benchmark scripts: timing and writing results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path


def rate_summary(rates: dict[str, float]) -> dict:
    """Mean, median and worst site of per-site refusal rates, and the rates themselves."""
    import statistics  # deferred with the rest: the timing helpers need none

    worst = max(rates, key=rates.get)
    return {
        "mean": statistics.fmean(rates.values()),
        "median": statistics.median(rates.values()),
        "worst": rates[worst],
        "worst_site": worst,
        "per_site": rates,
    }


def sample_refusal_rates(store, run, sample_key: str) -> dict[str, float]:
    """Per-site refusal rates of a sample artifact at the run's ε (samples carry distances;
    acceptance is read downstream, as the fcr stage reads it)."""
    from inversescope.scoring import refusal_rates
    from inversescope.storage.layout import read_samples

    return refusal_rates(read_samples(store.require("sample", sample_key)), run.kernel.epsilon)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` wall-clock timings of ``fn()`` (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def write_result(result: dict, out: str | Path) -> None:
    """Write the result as JSON (creating its folder) and print it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def generate_baseline(
    backbone, batch: int, new_tokens: int, eos: int, device
) -> Callable[[], object]:
    """The baseline our sampler is timed against: the backbone's own ``generate``, sampling
    exactly ``new_tokens`` tokens (temperature 1, no top-k/top-p) for ``batch`` rows that start
    at ``eos``."""
    import torch  # deferred: _common's timing helpers need no torch

    start = torch.full((batch, 1), eos, dtype=torch.long, device=device)  # (B, 1)

    @torch.no_grad()
    def run():
        return backbone.generate(
            input_ids=start,
            attention_mask=torch.ones_like(start),
            do_sample=True,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            pad_token_id=eos,
            eos_token_id=eos,
        )

    return run


def keys_with_upstream(run, names: tuple[str, ...], upstream, workdir) -> dict[str, str]:
    """``run_keys(run, names)``, except that each stage before ``controls`` whose config and
    inputs match a committed artifact in the workdir ``upstream`` (built by another checkout, so
    under another code key) takes that artifact's key, the artifact copied into ``workdir``.
    Stages without a match keep this checkout's key and are built as usual."""
    import shutil  # deferred with the project imports: the timing helpers need none

    from inversescope.flows.stage import run_keys, stage_module
    from inversescope.storage.artifacts import ArtifactStore
    from inversescope.storage.keys import canonical_json

    found: dict[str, str] = {}
    other = ArtifactStore(upstream)
    needed = run_keys(run, names)  # the stages the names read
    for name in ("prior", "target", "extract", "backbone"):
        if name not in needed:
            continue
        mod = stage_module(name)
        want = canonical_json(mod.config_of(run))
        inputs = {inp: run_keys(run, (inp,), found)[inp] for inp in mod.INPUTS}
        for art_dir in sorted((Path(upstream) / name).glob("[!.]*")):
            art = other.lookup(name, art_dir.name)
            if art is None or canonical_json(art.manifest["config"]) != want:
                continue
            if art.manifest["inputs"] != inputs:
                continue
            found[name] = art.key
            dest = Path(workdir) / name / art.key
            if not dest.exists():
                shutil.copytree(art.path, dest)
            break
    return run_keys(run, names, found)
