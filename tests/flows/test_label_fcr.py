"""Stages label and fcr: per-feature cache, failing features, the results table, the CLI."""

from pathlib import Path

import polars as pl
import pytest

from inversescope.config import ConfigError, check_run, load_run_config
from inversescope.errors import FeatureError
from inversescope.flows.cli import main
from inversescope.flows.stage import STAGE_ORDER, run_keys, run_stage
from inversescope.scoring import SCHEMA
from inversescope.storage.artifacts import ArtifactStore
from inversescope.storage.layout import RESULTS, read_labels, read_samples, read_split
from inversescope.storage.queries import scan_results

FIRST_WORD = (
    "def first_word(text):\n    words = text.split()\n    return words[0] if words else None\n"
)
LENGTH = "def length(text):\n    return len(text) // 10\n"


def run_all(run, workdir):
    keys = run_keys(run)
    return {name: run_stage(name, run, workdir, keys) for name in STAGE_ORDER}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("labels")


@pytest.fixture()
def user_features(tmp_path):
    (tmp_path / "f1.py").write_text(FIRST_WORD)
    (tmp_path / "f2.py").write_text(LENGTH)
    return tmp_path


def with_features(small, folder, extra=()):
    return load_run_config(
        "ioi-tiny",
        [
            *small,
            f"features={{first: '{folder}/f1.py:first_word', size: '{folder}/f2.py:length'}}",
            *extra,
        ],
    )


def test_labels_and_results(workdir, small, user_features):
    run = with_features(small, user_features)
    results = run_all(run, workdir)
    store = ArtifactStore(workdir)
    labels, reference = read_labels(store.require("label", results["label"].key))
    samples = read_samples(results["sample"].path)
    assert labels.height == samples.height
    assert labels.columns == [
        "site",
        "example_id",
        "sample_idx",
        "first",
        "item",
        "object",
        "place",
        "size",
        "subject",
    ]
    prior = read_split(store.require("prior", results["prior"].key), "test")
    assert reference.height == prior.height
    joined = reference.join(prior, on="id")
    assert (joined["subject"] == joined["subject_right"]).all()
    assert (joined["object"] == joined["io"]).all()

    table = pl.read_parquet(Path(results["fcr"].path) / RESULTS)
    assert dict(table.schema) == SCHEMA
    assert table.height == 3 * 6  # sites x features
    assert table.select(pl.struct("site", "feature").n_unique()).item() == table.height
    # an independent count: samples at or past ε (an empty text has no distance: refused)
    outside = pl.col("distance").is_nan() | (pl.col("distance") >= run.kernel.epsilon)
    refusal = samples.group_by("site").agg(r=outside.mean())
    check = table.join(refusal, on="site")
    assert ((check["refusal_rate"] - check["r"]).abs() < 1e-12).all()
    assert table.filter(pl.col("site") == "L1H0")["head"].unique().to_list() == [0]
    assert table.filter(pl.col("site") == "L1.attn")["head"].null_count() == 6
    for name in ("fcr_heads_subject.png", "fcr_layers.png", "refusal_hist.png"):
        assert (Path(results["fcr"].path) / name).stat().st_size > 1000
    assert scan_results(workdir).collect().height >= table.height


def test_editing_one_feature_relabels_only_it(workdir, small, user_features):
    run = with_features(small, user_features)
    run_all(run, workdir)
    (user_features / "f2.py").write_text(LENGTH.replace("// 10", "// 7"))
    run = with_features(small, user_features)
    results = run_all(run, workdir)
    statuses = {n: r.status for n, r in results.items()}
    reran = {"label": "ran", "fcr": "ran", "hypotheses": "ran"}
    assert statuses == {**dict.fromkeys(STAGE_ORDER, "cached"), **reran}
    store = ArtifactStore(workdir)
    info = store.require("label", results["label"].key).manifest["metrics"]["features"]
    assert {n: i["reused"] for n, i in info.items()} == {
        "first": True,
        "size": False,
        "subject": True,
        "object": True,
        "item": True,
        "place": True,
    }


def test_feature_that_raises(workdir, small, tmp_path):
    (tmp_path / "flaky.py").write_text(
        "def flaky(text):\n    if 'Mary' in text:\n        raise KeyError(text)\n    return 1\n"
        "def broken(text):\n    return {}['missing']\n"
    )
    ok = load_run_config(
        "ioi-tiny",
        [*small, f"features={{flaky: '{tmp_path}/flaky.py:flaky'}}", "label.max_error_share=1.0"],
    )
    results = run_all(ok, workdir)
    info = ArtifactStore(workdir).require("label", results["label"].key).manifest["metrics"]
    labels, reference = read_labels(ArtifactStore(workdir).require("label", results["label"].key))
    has_mary = read_split(ArtifactStore(workdir).require("prior", results["prior"].key), "test")
    n_mary = has_mary["text"].str.contains("Mary").sum()
    assert reference["flaky"].null_count() == n_mary
    assert info["features"]["flaky"]["errors"] >= n_mary

    bad = load_run_config(
        "ioi-tiny", [*small, f"features={{broken: '{tmp_path}/flaky.py:broken'}}"]
    )
    keys = run_keys(bad)
    for name in STAGE_ORDER[: STAGE_ORDER.index("label")]:
        run_stage(name, bad, workdir, keys)
    with pytest.raises(
        FeatureError, match=r"^feature 'broken' .* failed on \d+ of \d+ inputs .*raised KeyError"
    ):
        run_stage("label", bad, workdir, keys)
    assert ArtifactStore(workdir).lookup("label", keys["label"]) is None
    assert ArtifactStore(workdir).lookup("sample", keys["sample"]) is not None  # nothing lost


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ("{x: '/no/such/file.py:f'}", "file '/no/such/file.py' does not exist"),
        ("{x: 'nocolon'}", "is not of the form"),
        ("{x: 'inversescope.tasks.ioi:nothing'}", "is not a function"),
        ("{subject: 'inversescope.tasks.ioi:object'}", "is a built-in feature"),
    ],
)
def test_bad_feature_names_fail_before_work(features, message):
    with pytest.raises(ConfigError, match=message):
        check_run(load_run_config("ioi-tiny", [f"features={features}"]))


def test_cli_results_and_samples(workdir, small, user_features, capsys):
    run_all(with_features(small, user_features), workdir)
    assert main(["results", str(workdir), "--feature", "subject", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "subject" in out and "fcr" in out
    assert main(["samples", str(workdir), "--site", "L1H0", "--example", "1"]) == 0
    out = capsys.readouterr().out
    assert "reference labels:" in out and "subject=" in out and "distance" in out
    assert main(["samples", str(workdir), "--site", "L9H9", "--example", "1"]) == 2
    assert "site 'L9H9' was not sampled in this run; accepted:" in capsys.readouterr().err
