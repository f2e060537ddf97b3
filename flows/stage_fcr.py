"""Stage ``fcr``: feature consistency rate per (site, feature), refusal rate per site, plots.

The table comes from ``inversescope.scoring.compute_results`` (the Python API scores with the
same function); ``results.parquet`` has one row per (site, feature), its schema documented in
README.md. This stage is the first to read ε: acceptance is decided here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import polars as pl

from inversescope.scoring import compute_results, refusal_summary
from inversescope.storage import layout
from inversescope.storage.files import Where
from inversescope.storage.tables import write_parquet_atomic

if TYPE_CHECKING:
    from inversescope.config import RunConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "fcr"
INPUTS: tuple[str, ...] = ("sample", "label")
RESUMABLE = False


def config_of(run: RunConfig) -> dict[str, Any]:
    return {
        "preset": run.preset,
        "task": run.task,
        "method": run.controls.method,
        "seed": run.seed,
        "epsilon": run.kernel.epsilon,
        **run.fcr.model_dump(mode="json"),
    }


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
    rates = dict(results.unique("site", maintain_order=True).select("site", "refusal_rate").rows())
    return {"rows": results.height, "top_sites": top, **refusal_summary(rates)}


def draw_plots(results: pl.DataFrame, out: Where, method: str) -> None:
    from inversescope import plots  # matplotlib: deferred, computing keys must not load it

    for f in sorted(results["feature"].unique()):
        if results.filter((pl.col("feature") == f) & pl.col("head").is_not_null()).height:
            with layout.writing(layout.heads_plot_path(out, f)) as path:
                plots.fcr_heatmap(results, f, path)
    if results.filter(pl.col("head").is_null()).height:
        with layout.writing(layout.layers_plot_path(out)) as path:
            plots.fcr_per_layer(results, path)
    per_site = results.unique("site").select("site", "refusal_rate")
    with layout.writing(layout.refusal_plot_path(out)) as path:
        plots.refusal_histogram({method: dict(per_site.iter_rows())}, path)
