"""Compare the samples, labels and FCR table of two runs as data (row order and run keys aside).

    python scripts/compare_runs.py WORKDIR_A WORKDIR_B

Takes the latest committed ``fcr`` artifact of each working directory and the ``label`` and
``sample`` artifacts it was computed from. Prints one line per table and exits 1 if any differ.
Used to check that a change of code that must not change behaviour (a refactor) did not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

from inversescope.storage import layout
from inversescope.storage.artifacts import ArtifactStore
from inversescope.storage.queries import latest


def _samples(path: Path, manifest: dict) -> pl.DataFrame:
    if "parts" in manifest["metrics"]:
        return layout.read_samples(path)
    # artifacts written before manifests listed their parts
    return pl.read_parquet(path / layout.SAMPLES_DIR / "*.parquet")


def tables(workdir: str) -> dict[str, pl.DataFrame]:
    store = ArtifactStore(workdir)
    fcr_path, fcr = latest(workdir, "fcr")
    label = store.require("label", fcr["inputs"]["label"])
    sample = store.require("sample", fcr["inputs"]["sample"])
    labels, reference = layout.read_labels(label)
    keys = ["site", "example_id", "sample_idx"]
    return {
        "samples": _samples(sample.path, sample.manifest).sort(keys),
        "labels": labels.sort(keys),
        "reference": reference.sort("id"),
        "results": pl.read_parquet(layout.results_path(fcr_path))
        .drop("run_key")
        .sort("site", "feature"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    a, b = tables(args.a), tables(args.b)
    same = True
    for name in a:
        x, y = a[name], b[name]
        equal = x.columns == y.columns and x.equals(y)
        same &= equal
        print(
            f"{name:10s} rows {x.height:6d} / {y.height:6d}  columns {len(x.columns):2d}  "
            f"{'identical' if equal else 'DIFFERENT'}"
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
