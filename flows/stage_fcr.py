"""Stage ``fcr``: feature consistency rate per (site, feature), refusal rate per site, plots.

``results.parquet`` has one row per (site, feature); its schema is documented in README.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from inversescope.core.fcr import chance_level, estimate_fcr, kernel_weights
from inversescope.core.sites import parse_site
from inversescope.flows import plots
from inversescope.storage import layout
from inversescope.storage.tables import write_parquet_atomic

if TYPE_CHECKING:
    from inversescope.flows.config import RunConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "fcr"
INPUTS: tuple[str, ...] = ("sample", "label")
RESUMABLE = False
SCHEMA = {
    "preset": pl.String,
    "task": pl.String,
    "method": pl.String,
    "run_key": pl.String,
    "site": pl.String,
    "layer": pl.Int64,
    "head": pl.Int64,
    "feature": pl.String,
    "kernel": pl.String,
    "epsilon": pl.Float64,
    "fcr": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "n_examples": pl.Int64,
    "n_samples": pl.Int64,
    "chance": pl.Float64,
    "refusal_rate": pl.Float64,
}


def config_of(run: RunConfig) -> dict[str, Any]:
    return {
        "preset": run.preset,
        "task": run.task,
        "method": run.controls.method,
        "seed": run.seed,
        "kernel": run.kernel.model_dump(mode="json"),
        **run.fcr.model_dump(mode="json"),
    }


def compute_results(
    samples: pl.DataFrame,
    labels: pl.DataFrame,
    reference: pl.DataFrame,
    features: list[str],
    run: RunConfig,
    run_key: str,
) -> pl.DataFrame:
    eps = run.kernel.epsilon
    joined = samples.join(labels, on=["site", "example_id", "sample_idx"], how="left")
    refs = reference.rename({"id": "example_id"})
    pool = {f: reference[f].to_list() for f in features}  # prior draws: every reference
    # fcr.references ({feature: label}) restricts the references FCR averages over
    missing = sorted(set(run.fcr.references) - set(features))
    if missing:
        raise ValueError(
            f"fcr.references names {missing}, not a feature of this run; accepted: {features}"
        )
    kept = pl.lit(True)
    for feature, label in run.fcr.references.items():
        kept = kept & (pl.col(feature) == label)
    allowed = set(refs.filter(kept)["example_id"])
    rows = []
    for site in sorted(joined["site"].unique(), key=lambda s: parse_site(s).sort_key):
        part = joined.filter(pl.col("site") == site).sort("example_id", "sample_idx")
        parsed = parse_site(site)
        refusal = float(1 - part["accepted"].mean())  # over every reference
        if run.fcr.references:
            part = part.filter(pl.col("example_id").is_in(allowed))
        weight = kernel_weights(part["distance"].to_numpy(), eps, run.fcr.kernel)
        examples = part["example_id"].to_numpy()
        used = sorted(set(examples.tolist()))
        ref_part = part.select("example_id").join(
            refs, on="example_id", how="left", maintain_order="left"
        )
        for f in features:
            est = estimate_fcr(
                examples,
                np.array(part[f].to_list(), dtype=object),
                np.array(ref_part[f].to_list(), dtype=object),
                weight,
                run.fcr.n_bootstrap,
                run.fcr.ci_level,
                run.seed,
            )
            chance = chance_level(
                refs.filter(pl.col("example_id").is_in(used))[f].to_list(), pool[f]
            )
            rows.append(
                {
                    "preset": run.preset,
                    "task": run.task,
                    "method": run.controls.method,
                    "run_key": run_key,
                    "site": site,
                    "layer": parsed.layer,
                    "head": parsed.head,
                    "feature": f,
                    "kernel": run.fcr.kernel,
                    "epsilon": eps,
                    "fcr": est.fcr,
                    "ci_low": est.ci_low,
                    "ci_high": est.ci_high,
                    "n_examples": est.n_examples,
                    "n_samples": est.n_samples,
                    "chance": chance,
                    "refusal_rate": refusal,
                }
            )
    return pl.DataFrame(rows, schema=SCHEMA)


def build(ctx: StageContext) -> dict[str, Any]:
    run, out = ctx.run, ctx.out
    labels, reference = layout.read_labels(ctx.inputs["label"])
    features = ctx.inputs["label"].manifest["metrics"]["feature_names"]
    samples = layout.read_samples(ctx.inputs["sample"])
    results = compute_results(samples, labels, reference, features, run, ctx.key)
    write_parquet_atomic(results, layout.results_path(out))
    draw_plots(results, out, run.controls.method)
    top = {}
    for f in features:
        best = results.filter(pl.col("feature") == f).sort("fcr", descending=True, nulls_last=True)
        top[f] = best.head(5).select("site", "fcr", "chance").to_dicts()
    return {"rows": results.height, "top_sites": top}


def draw_plots(results: pl.DataFrame, out: Path, method: str) -> None:
    for f in sorted(results["feature"].unique()):
        if results.filter((pl.col("feature") == f) & pl.col("head").is_not_null()).height:
            plots.fcr_heatmap(results, f, layout.heads_plot_path(out, f))
    if results.filter(pl.col("head").is_null()).height:
        plots.fcr_per_layer(results, layout.layers_plot_path(out))
    per_site = results.unique("site").select("site", "refusal_rate")
    plots.refusal_histogram({method: dict(per_site.iter_rows())}, layout.refusal_plot_path(out))
