"""The FCR table of a run, from its samples and labels: one implementation, called by stage
``fcr`` and by the Python API (``Run.score``, ``Run.fcr_at``, ``Run.fcr_curve``), so a feature
scored in a notebook gets exactly the numbers the pipeline writes.

The math lives in ``inversescope.core.fcr``; this module joins the tables (polars) and lays
out the rows. ``results.parquet`` has one row per (site, feature), columns as ``SCHEMA``
(README: "Feature functions, labels and FCR").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from inversescope.core.distance import accepted
from inversescope.core.fcr import kernel_weights, score_site
from inversescope.core.sites import parse_site

if TYPE_CHECKING:
    from inversescope.config import RunConfig

SCHEMA = {
    "preset": pl.String,
    "task": pl.String,
    "method": pl.String,
    "run_key": pl.String,
    "site": pl.String,
    "layer": pl.Int64,
    "head": pl.Int64,
    "feature": pl.String,
    "weighting": pl.String,
    "epsilon": pl.Float64,
    "fcr": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "n_examples": pl.Int64,
    "n_samples": pl.Int64,
    "chance": pl.Float64,
    "refusal_rate": pl.Float64,
}
KEY = ["site", "example_id", "sample_idx"]


def with_accepted(samples: pl.DataFrame | pl.LazyFrame, epsilon: float):
    """``samples`` with ``accepted = distance < ε`` (an empty text, NaN distance: refused)."""
    return samples.with_columns(
        accepted=pl.col("distance").fill_nan(None).fill_null(np.inf) < epsilon
    )


def refusal_rates(samples: pl.DataFrame, epsilon: float) -> dict[str, float]:
    """Per site, the share of its samples outside the ε-ball (sites in canonical order)."""
    rates = {}
    for site in _sites(samples):
        d = samples.filter(pl.col("site") == site)["distance"].to_numpy()
        rates[site] = float(1 - accepted(d, epsilon).mean())
    return rates


def refusal_summary(rates: dict[str, float]) -> dict:
    """Mean and worst site of per-site refusal rates, with the rates themselves."""
    worst = max(rates, key=rates.__getitem__)
    return {
        "refusal_rate_mean": float(np.mean(list(rates.values()))),
        "refusal_rate_worst_site": [worst, rates[worst]],
        "refusal_rate_per_site": rates,
    }


def _sites(samples: pl.DataFrame) -> list[str]:
    return sorted(samples["site"].unique().to_list(), key=lambda s: parse_site(s).sort_key)


def compute_results(
    samples: pl.DataFrame,
    labels: pl.DataFrame,
    reference: pl.DataFrame,
    features: list[str],
    run: RunConfig,
    run_key: str,
    epsilon: float | None = None,
) -> pl.DataFrame:
    """One row per (site, feature): FCR with its bootstrap interval, chance, n, and the site's
    refusal rate, at ``epsilon`` (default: the run's ``kernel.epsilon``). ``samples`` holds
    (site, example_id, sample_idx, distance), ``labels`` the same keys and one column per
    feature, ``reference`` (id, one column per feature)."""
    eps = run.kernel.epsilon if epsilon is None else epsilon
    missing = sorted(set(run.fcr.references) - set(features))
    if missing:
        raise ValueError(
            f"fcr.references names {missing}, not a feature of this run; accepted: {features}"
        )
    joined = samples.select(*KEY, "distance").join(
        labels.select(*KEY, *features), on=KEY, how="left"
    )
    refs = reference.rename({"id": "example_id"})
    pool = {f: reference[f].to_list() for f in features}  # prior draws: every reference
    ref_of = {f: dict(zip(refs["example_id"].to_list(), refs[f].to_list(), strict=True))
              for f in features}  # fmt: skip
    # fcr.references ({feature: label}) restricts the references FCR averages over
    kept = pl.lit(True)
    for feature, label in run.fcr.references.items():
        kept = kept & (pl.col(feature) == label)
    allowed = set(refs.filter(kept)["example_id"])
    rates = refusal_rates(joined, eps)  # over every reference
    rows = []
    for site in _sites(joined):
        part = joined.filter(pl.col("site") == site).sort("example_id", "sample_idx")
        if run.fcr.references:
            part = part.filter(pl.col("example_id").is_in(allowed))
        parsed = parse_site(site)
        scores = score_site(
            part["example_id"].to_numpy(),
            kernel_weights(part["distance"].to_numpy(), eps, run.fcr.weighting),
            {f: part[f].to_list() for f in features},
            ref_of,
            pool,
            run.fcr.n_bootstrap,
            run.fcr.ci_level,
            run.seed,
        )
        for s in scores:
            est = s.estimate
            rows.append(
                {
                    "preset": run.preset,
                    "task": run.task,
                    "method": run.controls.method,
                    "run_key": run_key,
                    "site": site,
                    "layer": parsed.layer,
                    "head": parsed.head,
                    "feature": s.feature,
                    "weighting": run.fcr.weighting,
                    "epsilon": eps,
                    "fcr": est.fcr,
                    "ci_low": est.ci_low,
                    "ci_high": est.ci_high,
                    "n_examples": est.n_examples,
                    "n_samples": est.n_samples,
                    "chance": s.chance,
                    "refusal_rate": rates[site],
                }
            )
    return pl.DataFrame(rows, schema=SCHEMA)


def fcr_curve(
    samples: pl.DataFrame,
    labels: pl.DataFrame,
    reference: pl.DataFrame,
    features: list[str],
    run: RunConfig,
    run_key: str,
    epsilons: list[float],
) -> pl.DataFrame:
    """The results table at every ε of ``epsilons``, stacked: FCR against the radius of the
    neighbourhood (the paper's FCR-against-distance curve)."""
    bad = [e for e in epsilons if not 0 < e < 2]
    if not epsilons or bad:
        raise ValueError(f"epsilons {bad or epsilons}: give radii with 0 < epsilon < 2")
    return pl.concat(
        [
            compute_results(samples, labels, reference, features, run, run_key, e)
            for e in sorted(epsilons)
        ]
    )
