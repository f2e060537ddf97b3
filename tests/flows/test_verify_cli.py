"""``inversescope verify`` and ``inversescope gc``: exit codes and what they print."""

from pathlib import Path

import polars as pl
import pytest

from inversescope.flows.cli import main
from inversescope.storage.artifacts import ArtifactStore
from inversescope.storage.tables import write_parquet_atomic


def commit(store: ArtifactStore, stage: str, key: str, inputs: dict, created: str) -> Path:
    out = store.begin(stage, key, resumable=False)
    write_parquet_atomic(pl.DataFrame({"id": list(range(100))}), out / "table.parquet")
    return store.commit(stage, key, {"inputs": inputs, "created": created}).path


@pytest.fixture()
def workdir(tmp_path) -> Path:
    store = ArtifactStore(tmp_path)
    commit(store, "prior", "p", {}, "2026-01-01")
    commit(store, "fcr", "f", {"prior": "p"}, "2026-01-02")
    commit(store, "extract", "x", {"prior": "p"}, "2026-01-03")  # no fcr references it
    return tmp_path


def test_verify_a_clean_workdir(workdir, capsys):
    assert main(["verify", str(workdir)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [out[-1]] and out[-1].startswith("verify: 3 artifacts")


def test_verify_names_a_corrupt_file_and_a_stale_partial(workdir, capsys):
    table = workdir / "prior" / "p" / "table.parquet"
    table.write_bytes(table.read_bytes()[:-20])
    (workdir / "sample" / ".partial-s").mkdir(parents=True)
    assert main(["verify", str(workdir)]) == 1
    out = capsys.readouterr().out
    assert f"corrupt       {table}:" in out
    assert f"stale partial {workdir / 'sample' / '.partial-s'}:" in out
    assert "1 corrupt, 0 orphaned, 1 stale partial" in out.splitlines()[-1]


@pytest.mark.parametrize("command", ["verify", "gc"])
def test_a_missing_or_file_workdir_is_one_line(tmp_path, capsys, command):
    assert main([command, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"inversescope: error: workdir '{tmp_path / 'nope'}' does not exist; name an "
        "artifact directory"
    )
    (tmp_path / "file").write_text("x")
    assert main([command, str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_gc_dry_run_then_gc(workdir, capsys):
    extract = workdir / "extract" / "x"
    assert main(["gc", str(workdir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove {extract} (no kept fcr result references it" in out
    assert extract.is_dir()
    assert main(["gc", str(workdir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"removed {extract} ")
    assert out[-1].startswith("gc: freed ") and " bytes) in 1 paths; kept 1 fcr result " in out[-1]
    assert not extract.exists()
    assert main(["verify", str(workdir)]) == 0


def test_gc_keep_must_be_positive(workdir, capsys):
    assert main(["gc", str(workdir), "--keep", "0"]) == 2
    assert "--keep 0: expected a positive number" in capsys.readouterr().err
