"""The runs of a workdir, one run's overview (FCR and refusal over the site grid, the results
table and its CSV), a feature across layers, and two runs side by side."""

from __future__ import annotations

import math
from typing import Annotated

import polars as pl
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from inversescope.view import svg
from inversescope.view.app import render
from inversescope.view.data import RunData
from inversescope.view.errors import Missing, OutOfBounds

router = APIRouter()

TABLE_COLUMNS = (
    "site",
    "feature",
    "fcr",
    "ci_low",
    "ci_high",
    "chance",
    "n_examples",
    "n_samples",
    "refusal_rate",
)


def _run(request: Request, key: str) -> RunData:
    return request.app.state.workdir.run(key)


@router.get("/")
def runs_page(request: Request):
    wd = request.app.state.workdir
    runs = wd.runs()
    pending = wd.pending()
    status = 200 if runs.height else 404
    return render(request, "runs.html", status, runs=runs.to_dicts(), pending=pending)


# --- one run -----------------------------------------------------------------------------
def fcr_cells(results: pl.DataFrame, key: str, feature: str) -> list[svg.Cell]:
    cells = []
    for r in results.filter(pl.col("feature") == feature).iter_rows(named=True):
        fcr = r["fcr"]
        defined = fcr is not None and not math.isnan(fcr)
        tip = (
            f"{r['site']} {feature}: FCR {_f(fcr)} [{_f(r['ci_low'])}, {_f(r['ci_high'])}], "
            f"chance {_f(r['chance'])}, n = {r['n_examples']} examples / {r['n_samples']} samples"
        )
        cells.append(
            svg.Cell(
                r["site"],
                r["layer"],
                r["head"],
                fcr if defined else None,
                f"{fcr:.2f}" if defined else "–",
                tip,
                f"/run/{key}/site/{r['site']}",
                defined and r["ci_low"] > r["chance"],
            )
        )
    return cells


def refusal_cells(results: pl.DataFrame, key: str) -> list[svg.Cell]:
    sites = results.unique("site", maintain_order=True)
    return [
        svg.Cell(
            r["site"],
            r["layer"],
            r["head"],
            r["refusal_rate"],
            f"{r['refusal_rate']:.2f}",
            f"{r['site']}: refusal rate {r['refusal_rate']:.3f} (share of samples outside ε)",
            f"/run/{key}/site/{r['site']}",
        )
        for r in sites.iter_rows(named=True)
    ]


def _f(v) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.3f}"


def _sorted_table(run: RunData, sort: str, desc: bool, feature: str | None) -> pl.DataFrame:
    if sort not in TABLE_COLUMNS:
        raise OutOfBounds("Unknown column", f"sort={sort!r}; accepted: {', '.join(TABLE_COLUMNS)}")
    df = run.results.select(TABLE_COLUMNS)
    if feature:
        df = df.filter(pl.col("feature") == run.feature(feature))
    return df.sort([sort, "site", "feature"], descending=[desc, False, False], nulls_last=True)


def overview_maps(run: RunData):
    """(FCR heat map per feature, refusal heat map) of a run, drawn once per server."""
    if "overview" not in run.memo:
        maps = {
            f: svg.site_grid(fcr_cells(run.results, run.key, f), f"FCR {f}", "FCR")
            for f in run.features
        }
        cells = refusal_cells(run.results, run.key)
        run.memo["overview"] = maps, svg.site_grid(cells, "refusal rate", "refusal", svg.REDS)
    return run.memo["overview"]


@router.get("/run/{key}")
def run_page(
    request: Request, key: str, sort: str = "fcr", desc: bool = True, feature: str | None = None
):
    run = _run(request, key)
    table = _sorted_table(run, sort, desc, feature)
    maps, refusal = overview_maps(run)
    return render(
        request,
        "run.html",
        run=run,
        maps=maps,
        refusal=refusal,
        table=table.to_dicts(),
        columns=TABLE_COLUMNS,
        sort=sort,
        desc=desc,
        feature=feature,
    )


@router.get("/run/{key}/results.csv")
def results_csv(
    request: Request, key: str, sort: str = "fcr", desc: bool = True, feature: str | None = None
):
    run = _run(request, key)
    body = _sorted_table(run, sort, desc, feature).write_csv()
    name = f"results-{run.key[:12]}{'-' + feature if feature else ''}.csv"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return Response(body, media_type="text/csv", headers=headers)


# --- one feature across layers -----------------------------------------------------------
def layer_series(results: pl.DataFrame, feature: str) -> tuple[list[svg.Series], list]:
    rows = results.filter(pl.col("feature") == feature)
    heads = rows.filter(pl.col("head").is_not_null())
    attn = rows.filter(pl.col("head").is_null())
    series = []
    if heads.height:
        per = (
            heads.group_by("layer")
            .agg(pl.col("fcr").mean(), pl.col("ci_low").mean(), pl.col("ci_high").mean())
            .sort("layer")
        )
        dots = [
            (
                r["layer"],
                r["fcr"],
                f"{r['site']}: FCR {_f(r['fcr'])} [{_f(r['ci_low'])}, "
                f"{_f(r['ci_high'])}], chance {_f(r['chance'])}",
            )
            for r in heads.iter_rows(named=True)
            if r["fcr"] is not None and not math.isnan(r["fcr"])
        ]
        series.append(svg.Series("heads (mean)", _points(per), dots))
    if attn.height:
        dots = [
            (r["layer"], r["fcr"], f"{r['site']}: FCR {_f(r['fcr'])}")
            for r in attn.iter_rows(named=True)
            if r["fcr"] is not None and not math.isnan(r["fcr"])
        ]
        series.append(svg.Series("layer outputs", _points(attn.sort("layer")), dots))
    chance = rows.group_by("layer").agg(pl.col("chance").mean()).sort("layer")
    return series, [(r["layer"], r["chance"]) for r in chance.iter_rows(named=True)]


def _points(df: pl.DataFrame) -> list[tuple[int, float, float, float]]:
    return [
        (r["layer"], *(math.nan if r[c] is None else r[c] for c in ("fcr", "ci_low", "ci_high")))
        for r in df.iter_rows(named=True)
    ]


@router.get("/run/{key}/feature/{feature}")
def feature_page(request: Request, key: str, feature: str):
    run = _run(request, key)
    feature = run.feature(feature)
    series, chance = layer_series(run.results, feature)
    n_layers = int(run.results["layer"].max()) + 1
    rows = run.results.filter(pl.col("feature") == feature)
    best = rows.sort("fcr", descending=True, nulls_last=True).head(10).to_dicts()
    layers = (
        rows.group_by("layer", pl.col("head").is_null().alias("attn"))
        .agg(
            pl.col("fcr").mean(),
            pl.col("ci_low").mean(),
            pl.col("ci_high").mean(),
            pl.col("chance").mean(),
            pl.len().alias("sites"),
        )
        .sort("layer", "attn")
        .to_dicts()
    )
    return render(
        request,
        "feature.html",
        run=run,
        feature=feature,
        best=best,
        layers=layers,
        plot=svg.layer_plot(series, chance, n_layers),
    )


# --- two runs side by side ---------------------------------------------------------------
@router.get("/compare")
def compare_runs(
    request: Request,
    run: Annotated[list[str], Query()] = [],  # noqa: B006
    feature: str | None = None,
):
    if len(run) != 2:
        raise OutOfBounds(
            "Pick two runs", f"compare takes exactly two runs; the URL names {len(run)}"
        )
    a, b = (_run(request, k) for k in run)
    shared = [f for f in a.features if f in b.features]
    if not shared:
        raise Missing("Nothing to compare", "the two runs share no feature")
    feature = feature or shared[0]
    if feature not in shared:
        raise Missing(
            "Unknown feature",
            f"{feature!r} is not a feature of both runs; accepted: {', '.join(shared)}",
        )
    cols = ["site", "feature", "fcr", "refusal_rate"]
    joined = (
        a.results.filter(pl.col("feature") == feature)
        .select(cols)
        .join(b.results.select(cols), on=["site", "feature"], suffix="_b")
        .with_columns(delta=pl.col("fcr_b") - pl.col("fcr"))
        .sort(pl.col("delta").abs(), descending=True, nulls_last=True)
    )
    maps = [
        svg.site_grid(fcr_cells(r.results, r.key, feature), f"FCR {feature}", "FCR") for r in (a, b)
    ]
    return render(
        request,
        "compare_runs.html",
        a=a,
        b=b,
        feature=feature,
        features=shared,
        maps=maps,
        rows=joined.to_dicts(),
        keys=run,
    )
