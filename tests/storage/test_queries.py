"""polars queries over committed artifacts: results across workdirs, samples with labels."""

import polars as pl
import pytest

from inversescope.storage import layout
from inversescope.storage.artifacts import ArtifactStore
from inversescope.storage.queries import latest, scan_results, scan_samples_with_labels


def _commit(store: ArtifactStore, stage: str, key: str, write, **manifest):
    out = store.begin(stage, key, resumable=False)
    write(out)
    return store.commit(stage, key, manifest)


def _results(run_key: str, fcr: float) -> pl.DataFrame:
    return pl.DataFrame({"run_key": [run_key] * 2, "site": ["L0H0", "L1H0"], "fcr": [fcr, 0.5]})


def test_scan_results_reads_every_committed_table_and_nothing_else(tmp_path):
    a, b = ArtifactStore(tmp_path / "a"), ArtifactStore(tmp_path / "b")
    _commit(a, "fcr", "k1", lambda out: _results("k1", 0.9).write_parquet(layout.results_path(out)))
    _commit(b, "fcr", "k2", lambda out: _results("k2", 0.1).write_parquet(layout.results_path(out)))
    # a partial artifact (no manifest) is not a result
    b.begin("fcr", "k3", resumable=False)
    _results("k3", 0.0).write_parquet(layout.results_path(b.partial_path("fcr", "k3")))
    res = scan_results(tmp_path / "a", tmp_path / "b").collect()
    assert sorted(res["run_key"].unique()) == ["k1", "k2"]
    top = res.sort("fcr", descending=True).row(0, named=True)
    assert (top["run_key"], top["site"], top["fcr"]) == ("k1", "L0H0", 0.9)
    with pytest.raises(FileNotFoundError, match="no fcr results"):
        scan_results(tmp_path / "empty")


def test_latest_and_samples_with_labels(tmp_path):
    store = ArtifactStore(tmp_path)
    samples = pl.DataFrame(
        {
            "site": ["L0H0"] * 3,
            "example_id": [0, 0, 1],
            "sample_idx": [0, 1, 0],
            "text": ["a", "b", "c"],
            "distance": [0.01, 0.5, 0.02],
            "accepted": [True, False, True],
        }
    )

    def write_samples(out):
        layout.sample_part(out, "L0H0", 0).parent.mkdir(parents=True)
        samples.write_parquet(layout.sample_part(out, "L0H0", 0))
        # a stray file beside the parts is never read (readers follow the manifest)
        samples.write_parquet(layout.sample_part(out, "L0H0", 1))

    parts = [layout.sample_part_name("L0H0", 0)]
    _commit(store, "sample", "s1", write_samples, metrics={"parts": parts})
    labels = samples.select("site", "example_id", "sample_idx").with_columns(
        subject=pl.Series(["Mary", "John", "Anna"])
    )
    reference = pl.DataFrame({"id": [0, 1], "subject": ["Mary", "Bob"]})
    _commit(
        store,
        "label",
        "l1",
        lambda out: layout.write_labels(out, labels, reference),
        inputs={"sample": "s1"},
        metrics={"feature_names": ["subject"]},
    )
    path, manifest = latest(tmp_path, "label")
    assert path == store.path("label", "l1") and manifest["key"] == "l1"
    got = scan_samples_with_labels(tmp_path).sort("example_id", "sample_idx").collect()
    assert got.height == 3
    assert got["subject"].to_list() == ["Mary", "John", "Anna"]
    assert got["subject_ref"].to_list() == ["Mary", "Mary", "Bob"]
    consistent = got.filter(pl.col("accepted")).select(
        (pl.col("subject") == pl.col("subject_ref")).mean()
    )
    assert consistent.item() == 0.5
