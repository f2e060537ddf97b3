"""User errors found before any work starts: exit code 2 and one line naming the value."""

import pytest

from inversescope.flows.cli import main


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["run", "ioi-tiny", "--set", "device=tpu"], "device='tpu' is not a torch device"),
        (["run", "ioi-tiny", "--set", "device=cuda"], "this machine has no CUDA device"),
        (["run", "ioi-tiny", "--set", "runner.address=tcp://h:1"], "needs runner.kind=dask"),
        (["run", "ioi-tiny", "--set", "runner.shards=0"], "runner.shards"),
        (
            ["run", "ioi-tiny", "--set", "fcr.references={colour: red}"],
            "fcr.references names features ['colour']",
        ),
    ],
)
def test_bad_values_exit_2_with_one_line(argv, expect, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err


def test_non_utf8_yaml_and_a_workdir_that_is_a_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"preset: ioi-tiny\nseed: \xff\xfe\n")
    assert main(["run", str(bad)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["run", "ioi-tiny", "--workdir", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and len(err.strip().splitlines()) == 1


def test_results_of_an_unknown_feature_names_the_known_ones(tmp_path, capsys):
    import polars as pl

    from inversescope.storage import layout
    from inversescope.storage.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path)
    out = store.begin("fcr", "k", resumable=False)
    pl.DataFrame(
        {"run_key": ["k"], "feature": ["subject"], "site": ["L0H0"], "fcr": [0.5]}
    ).write_parquet(layout.results_path(out))
    store.commit("fcr", "k", {})
    assert main(["results", str(tmp_path), "--feature", "nope"]) == 2
    assert "unknown feature 'nope'; accepted: subject" in capsys.readouterr().err
