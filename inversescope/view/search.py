"""Search a run's samples: by a substring of their text, by site, accepted or refused, and by
a feature's label (the same as the reference's, different, undefined, or a given value).

A search reads the run's sites in blocks, in site order, and stops when its page is full or
when it has spent its time budget: a rare substring over the paper's 460,800 samples does not
hold a page for longer than the others. The page then says which sites it searched and links to
the next block; where it stopped (a site and how many of its matches were shown) is in the URL,
as every page's state is.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from fastapi import APIRouter, Request

from inversescope.scoring import KEY
from inversescope.view.app import render, url
from inversescope.view.data import RunData, guarded
from inversescope.view.errors import OutOfBounds
from inversescope.view.rows import bar_scale, sample_rows

router = APIRouter()

PER_PAGE = 50
MAX_QUERY_CHARS = 200
SITES_PER_BLOCK = 16
BUDGET_SECONDS = 0.1
"""Scan time after which a search page shows what it found and offers to go on."""
RELATIONS: tuple[str, ...] = ("any", "same", "differs", "undefined", "is")


@dataclass(frozen=True)
class Search:
    text: str = ""
    site: str | None = None
    accepted: Literal["any", "yes", "no"] = "any"
    feature: str | None = None
    relation: str = "any"
    value: str = ""


@dataclass
class Found:
    rows: pl.DataFrame
    searched: list[str]  # the sites this page covers (the last one perhaps in part)
    next_site: str | None  # where the next page starts (None: nothing left)
    next_skip: int  # matches of next_site this and earlier pages showed


def _relation(run: RunData, q: Search) -> pl.Expr:
    label = pl.col(q.feature)
    if q.relation == "undefined":
        return label.is_null()
    if q.relation == "is":
        return label == q.value
    refs = dict(zip(run.references["example_id"], run.references[q.feature], strict=True))
    ref = pl.col("example_id").replace_strict(refs, default=None, return_dtype=pl.String)
    return (label == ref) if q.relation == "same" else (label != ref)


def _matches(run: RunData, q: Search, sites: list[str]) -> pl.LazyFrame:
    """The samples of ``sites`` matching ``q``, in the run's order: the substring and the
    distance in the scan, then the label join (labels of these sites only)."""
    lf = run.scan_samples(sites)
    if q.text:
        lf = lf.filter(pl.col("text").str.contains("(?i)" + re.escape(q.text)))
    if q.accepted != "any":
        ok = pl.col("distance").fill_nan(None).fill_null(np.inf) < run.epsilon
        lf = lf.filter(ok if q.accepted == "yes" else ~ok)
    if q.feature and q.relation != "any":
        labels = run.scan_labels().select(*KEY, q.feature).filter(pl.col("site").is_in(sites))
        lf = lf.join(labels, on=KEY, how="inner", maintain_order="left")
        lf = lf.filter(_relation(run, q)).drop(q.feature)
    return lf


def search(run: RunData, q: Search, start: str | None, skip: int, limit: int) -> Found:
    """Up to ``limit`` matches from site ``start`` on (its first ``skip`` matches shown
    already), reading blocks of sites until the page is full or the time budget is spent."""
    sites = [q.site] if q.site else run.sites
    first = i = sites.index(start) if start else 0
    t0 = time.perf_counter()
    pages = []
    while i < len(sites):
        block = sites[i : i + SITES_PER_BLOCK]
        want = limit - sum(p.height for p in pages)
        got = guarded(
            "the samples", run.workdir, _matches(run, q, block).head(skip + want + 1).collect
        )
        shown = got.slice(skip, want)
        pages.append(shown)
        if got.height > skip + want:  # the page is full and more follow
            nxt = got["site"][skip + want]
            before = got.head(skip + want)["site"]
            covered = sites[first : sites.index(nxt) + 1]
            return Found(pl.concat(pages), covered, nxt, int((before == nxt).sum()))
        i += len(block)
        skip = 0
        if time.perf_counter() - t0 > BUDGET_SECONDS:
            break
    rows = pl.concat(pages) if pages else pl.DataFrame()
    return Found(rows, sites[first:i], sites[i] if i < len(sites) else None, 0)


@router.get("/run/{key}/search")
def search_page(
    request: Request,
    key: str,
    q: str = "",
    site: str = "",
    accepted: str = "any",
    feature: str = "",
    relation: str = "any",
    value: str = "",
    start: str = "",
    skip: int = 0,
):
    run: RunData = request.app.state.workdir.run(key)
    if len(q) > MAX_QUERY_CHARS:
        raise OutOfBounds("Search text too long", f"{len(q)} characters; at most {MAX_QUERY_CHARS}")
    if accepted not in ("any", "yes", "no"):
        raise OutOfBounds("Bad value in the URL", f"accepted={accepted!r}; accepted: any, yes, no")
    if relation not in RELATIONS:
        raise OutOfBounds(
            "Bad value in the URL", f"relation={relation!r}; accepted: {', '.join(RELATIONS)}"
        )
    if relation != "any" and not feature:
        raise OutOfBounds(
            "Which feature?", f"relation={relation!r} compares a feature: name one (feature=...)"
        )
    if skip < 0:
        raise OutOfBounds("Bad value in the URL", f"skip={skip}: expected 0 or more")
    query = Search(
        text=q,
        site=run.site(site) if site else None,
        accepted=accepted,  # type: ignore[arg-type]
        feature=run.feature(feature) if feature else None,
        relation=relation,
        value=value,
    )
    start = run.site(start) if start else ""
    if start and query.site and start != query.site:
        raise OutOfBounds(
            "Bad value in the URL", f"start={start!r} is not the searched site {query.site}"
        )
    asked = any(k in request.query_params for k in ("q", "site", "accepted", "feature", "relation"))
    found = search(run, query, start or None, skip, PER_PAGE) if asked else None
    params = dict(
        q=q, site=site, accepted=accepted, feature=feature, relation=relation, value=value
    )
    base = f"/run/{run.key}/search"
    mid = run.sites[len(run.sites) // 2]
    example = dict(site=mid, accepted="yes", feature=run.features[0], relation="differs")
    rows = run.with_labels(found.rows).to_dicts() if found and found.rows.height else []
    scale = bar_scale(rows, run.epsilon)
    rows = sample_rows(rows, run.features, scale)
    return render(
        request,
        "search.html",
        run=run,
        params=params,
        found=found,
        rows=rows,
        per=PER_PAGE,
        first_url=url(base, **params) if start else None,
        next_url=url(base, **params, start=found.next_site, skip=found.next_skip or None)
        if found and found.next_site
        else None,
        example_url=url(base, **example),
        relations=RELATIONS,
        n_sites=1 if query.site else len(run.sites),
        scale=scale,
    )
