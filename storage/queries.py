"""polars queries over the artifacts of one or more working directories, lazily."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from inversescope.core.sites import parse_site
from inversescope.storage import layout
from inversescope.storage.artifacts import ArtifactStore
from inversescope.storage.files import Where
from inversescope.storage.tables import scan_parquet


def _manifests(workdir: Where | str, stage: str) -> list[tuple[Where, dict]]:
    return [(a.path, a.manifest) for a in ArtifactStore(workdir).committed(stage)]


def scan_results(*workdirs: str | Path) -> pl.LazyFrame:
    """Every committed FCR table under the working directories, as one LazyFrame (one row per
    run, site and feature; see README for the columns)."""
    files = [layout.results_path(path) for wd in workdirs for path, _ in _manifests(wd, "fcr")]
    if not files:
        raise FileNotFoundError(f"no fcr results under {', '.join(map(str, workdirs))}")
    return scan_parquet(files)


def scan_hypotheses(*workdirs: str | Path) -> pl.LazyFrame:
    """Every committed hypotheses table under the working directories, as one LazyFrame (one
    row per run, site and candidate; see README for the columns)."""
    files = [
        layout.hypotheses_path(path) for wd in workdirs for path, _ in _manifests(wd, "hypotheses")
    ]
    if not files:
        raise FileNotFoundError(f"no hypotheses under {', '.join(map(str, workdirs))}")
    return scan_parquet(files)


def top_hypotheses(table: pl.DataFrame | pl.LazyFrame, n: int) -> pl.DataFrame:
    """The per-site summary: each site's ``n`` best hypotheses (ranked: q below the run's
    alpha, by normalised lift), sites in layer and head order."""
    top = table.lazy().filter(pl.col("rank") <= n).collect()
    sites = sorted(top["site"].unique(), key=lambda s: parse_site(s).sort_key)
    position = pl.col("site").replace_strict({s: i for i, s in enumerate(sites)}, default=None)
    return top.sort(position, "rank")


def latest(workdir: str | Path, stage: str) -> tuple[Where, dict]:
    """The most recently committed artifact of ``stage`` (path, manifest)."""
    found = _manifests(workdir, stage)
    if not found:
        raise FileNotFoundError(f"no committed {stage} artifact under {workdir}")
    return max(found, key=lambda pm: pm[1].get("created", ""))


def scan_samples_with_labels(workdir: str | Path) -> pl.LazyFrame:
    """Samples of the latest labelled run, joined with their labels and their reference's."""
    store = ArtifactStore(workdir)
    label_path, label_manifest = latest(workdir, "label")
    label = store.require("label", label_manifest["key"])
    sample = store.require("sample", label_manifest["inputs"]["sample"])
    features = label_manifest["metrics"]["feature_names"]
    reference = scan_parquet([label.path / layout.REFERENCE]).rename(
        {"id": "example_id", **{f: f"{f}_ref" for f in features}}
    )
    return (
        layout.scan_samples(sample)
        .join(
            scan_parquet([label.path / layout.LABELS]),
            on=["site", "example_id", "sample_idx"],
            how="left",
        )
        .join(reference, on="example_id", how="left")
    )
