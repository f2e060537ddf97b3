"""A site's page (refusal, distance histogram, FCR per feature, then its references with their
samples, paged) and the compare page: one site and reference under every sampling method the
workdir holds samples of."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from inversescope.storage import layout, tables
from inversescope.view import svg
from inversescope.view.app import render, url
from inversescope.view.data import RunData, attach_labels, guarded, site_parts
from inversescope.view.errors import OutOfBounds
from inversescope.view.rows import bar_scale, sample_rows

router = APIRouter()

MAX_PER_PAGE = 20
"""Most references one site page shows."""
METHODS = ("inversescope", "inversionview", "prior")


def _run(request: Request, key: str) -> RunData:
    return request.app.state.workdir.run(key)


def reference_view(run: RunData, example: int, samples: pl.DataFrame, scale: float) -> dict:
    """One reference as the pages show it: text cut at the read token, labels, samples."""
    ref = run.reference(example)
    before, token, after = run.read_token(ref["text"])
    rows = sample_rows(
        samples.filter(pl.col("example_id") == example).to_dicts(), run.features, scale
    )
    return {
        "example_id": example,
        "before": before,
        "token": token,
        "after": after,
        "labels": {f: ref.get(f) for f in run.features},
        "samples": rows,
        "accepted": sum(bool(r["accepted"]) for r in rows),
    }


@router.get("/run/{key}/site")
def pick_site(request: Request, key: str, site: str):
    """The site picker's target: the site's own page."""
    run = _run(request, key)
    return RedirectResponse(f"/run/{run.key}/site/{run.site(site)}", status_code=303)


@router.get("/run/{key}/site/{site}")
def site_page(
    request: Request, key: str, site: str, example: int | None = None, page: int = 1, per: int = 5
):
    run = _run(request, key)
    site = run.site(site)
    if not 1 <= per <= MAX_PER_PAGE:
        raise OutOfBounds("Too many references", f"per={per}: show 1 to {MAX_PER_PAGE} per page")
    pages = math.ceil(run.n_examples / per)
    if not 1 <= page <= pages:
        raise OutOfBounds("No such page", f"page={page}: this site has pages 1 to {pages} of {per}")
    if example is not None:
        examples = [run.example(example)]
    else:
        examples = list(range((page - 1) * per, min(page * per, run.n_examples)))
    samples = run.samples(site, examples)
    scale = bar_scale(samples.select("distance").to_dicts(), run.epsilon)
    distances = run.distances(site)
    fcr = run.results.filter(pl.col("site") == site).sort("feature").to_dicts()
    i = run.sites.index(site)
    return render(
        request,
        "site.html",
        run=run,
        site=site,
        example=example,
        page=page,
        per=per,
        pages=pages,
        refs=[reference_view(run, e, samples, scale) for e in examples],
        scale=scale,
        hist=svg.histogram(distances, run.epsilon),
        fbars=svg.feature_bars(fcr),
        fcr=fcr,
        refusal=run.refusal(site),
        n_samples=int(distances.size),
        n_empty=int(np.isnan(distances).sum()),
        prev_site=run.sites[i - 1] if i else None,
        next_site=run.sites[i + 1] if i + 1 < len(run.sites) else None,
    )


# --- the same site and reference under every method ---------------------------------------
def _method_column(request: Request, run: RunData, art, site: str, example: int) -> dict:
    """One method's samples of (site, example) from its sample artifact, labelled where a
    label artifact of those samples exists."""
    wd = request.app.state.workdir
    parts = site_parts(art.path, layout.sample_parts(art.path), site)
    sampled = art.manifest.get("run", {}).get("sample", {}).get("n_examples", 0)
    if not parts or example >= sampled:
        return {
            "method": art.method,
            "art": art,
            "missing": f"no samples of {site}, example {example}",
        }
    lf = tables.scan_parquet(list(parts))
    all_d = guarded(f"samples {art.key}", run.workdir, lf.select("distance").collect)["distance"]
    refused = float((all_d.cast(pl.Float64).fill_nan(None).fill_null(np.inf) >= run.epsilon).mean())
    df = guarded(
        f"samples {art.key}", run.workdir, lf.filter(pl.col("example_id") == example).collect
    )
    labels_dir = (
        run.run.artifacts["label"].path
        if art.key == run.run.artifacts["sample"].key
        else wd.labels_of(art.key)
    )
    labels = tables.scan_parquet([labels_dir / layout.LABELS]) if labels_dir else None
    df = attach_labels(df, labels, run.references, run.features, run.epsilon, run.workdir)
    return {
        "method": art.method,
        "art": art,
        "refusal": refused,
        "labelled": labels is not None,
        "samples": df.sort("distance", nulls_last=True).to_dicts(),
    }


@router.get("/run/{key}/methods")
def methods_page(request: Request, key: str, site: str | None = None, example: int = 0):
    run = _run(request, key)
    site = run.site(site) if site else run.sites[0]
    example = run.example(example)
    extract, own = run.run.artifacts["extract"].key, run.run.artifacts["sample"].key
    found = request.app.state.workdir.sample_artifacts()  # oldest first: the newest wins
    by_method = {a.method: a for a in found if a.extract_key == extract}
    by_method[run.config.controls.method] = next(a for a in found if a.key == own)
    order = [m for m in METHODS if m in by_method] + sorted(set(by_method) - set(METHODS))
    columns = [_method_column(request, run, by_method[m], site, example) for m in order]
    scale = bar_scale([s for c in columns for s in c.get("samples", [])], run.epsilon)
    for c in columns:
        c["samples"] = sample_rows(c.get("samples", []), [], scale)
    ref = reference_view(run, example, pl.DataFrame(schema={"example_id": pl.Int64}), scale)
    return render(
        request,
        "methods.html",
        run=run,
        site=site,
        example=example,
        ref=ref,
        columns=columns,
        absent=[m for m in METHODS if m not in by_method],
        scale=scale,
        here=url(f"/run/{run.key}/methods", site=site, example=example),
    )
