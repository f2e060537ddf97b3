"""Invert a prompt: the server reads the prompt's activation at a site with the run's target,
samples inputs for it with the run's trained generator, and shows them as the site page does.
The models load on the first request and stay loaded for the server's life; one sampling runs
at a time per run."""

from __future__ import annotations

import time

import polars as pl
from fastapi import APIRouter, Request

from inversescope.view.app import render
from inversescope.view.errors import OutOfBounds, Unreadable, first_line
from inversescope.view.rows import bar_scale, sample_rows

router = APIRouter()

MAX_PROMPT_CHARS = 400
"""Longest prompt the invert page accepts."""
MAX_SAMPLES = 64
"""Most samples one invert request draws."""


def _set_threads(n: int | None) -> None:
    if n is not None:
        import torch  # deferred: only this page runs models

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


@router.get("/run/{key}/invert")
def invert_page(
    request: Request, key: str, prompt: str = "", site: str = "", n: int = 32, seed: int = 0
):
    run = request.app.state.workdir.run(key)
    site = run.site(site) if site else run.sites[0]
    form = dict(
        prompt=prompt, site=site, n=n, seed=seed, max_chars=MAX_PROMPT_CHARS, max_n=MAX_SAMPLES
    )
    if len(prompt) > MAX_PROMPT_CHARS:
        raise OutOfBounds(
            "Prompt too long",
            f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are accepted",
        )
    if not 1 <= n <= MAX_SAMPLES:
        raise OutOfBounds("Too many samples", f"n={n}: draw 1 to {MAX_SAMPLES} samples")
    if not prompt.strip():
        return render(request, "invert.html", run=run, form=form, result=None)
    t0 = time.perf_counter()
    _set_threads(request.app.state.torch_threads)
    with run.model_lock:
        try:
            df = run.run.sample(run.run.activation(prompt, site), site, n=n, seed=seed)
        except (OSError, ImportError, RuntimeError) as e:
            raise Unreadable(
                "The run's models cannot be loaded or run here",
                first_line(e),
                "the invert page needs the run's target, backbone and controls",
            ) from e
    seconds = time.perf_counter() - t0
    ref = {f: labels[0] for f, labels in run.plain_features([prompt]).items()}
    features = [f for f in ref if f in df.columns]
    df = df.with_row_index("sample_idx").with_columns(
        pl.lit(ref[f], dtype=pl.String).alias(f"{f}_ref") for f in features
    )
    before, token, after = run.read_token(prompt)
    result = {
        "before": before,
        "token": token,
        "after": after,
        "labels": ref,
        "seconds": seconds,
        "samples": df.to_dicts(),
        "accepted": int(df["accepted"].sum()),
        "features": features,
    }
    scale = bar_scale(result["samples"], run.epsilon)
    result["samples"] = sample_rows(result["samples"], features, scale)
    return render(request, "invert.html", run=run, form=form, result=result, scale=scale)
