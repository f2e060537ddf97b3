"""verify and gc of a workdir: real artifacts with flipped bytes, and synthetic manifest chains."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from inversescope.config import load_run_config
from inversescope.flows.stage import run_stage
from inversescope.storage.activations import STORE, ActivationStore, CorruptActivations
from inversescope.storage.artifacts import MANIFEST, ArtifactStore
from inversescope.storage.locks import host_name
from inversescope.storage.verify import (
    CORRUPT,
    IN_PROGRESS,
    ORPHANED,
    STALE,
    collect_garbage,
    verify_workdir,
)

# the small config of tests/conftest.py with even shorter training: only the files matter here
FAST = [
    "target.train={steps: 2, batch_size: 16, eval_every: 1}",
    "backbone.train={steps: 2, batch_size: 16, eval_every: 1}",
    "controls.train={steps: 4, batch_size: 16, lr: 0.001, warmup: 1, eval_every: 2}",
]


def flip_bytes(path: Path, at: float = 0.5, n: int = 8) -> None:
    """Invert ``n`` bytes of ``path`` from the fraction ``at`` of its length on."""
    data = bytearray(path.read_bytes())
    start = min(int(len(data) * at), len(data) - n)
    for i in range(start, start + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def small_run(overrides):
    return load_run_config("ioi-tiny", [*overrides, *FAST])


@pytest.fixture(scope="module")
def built(tmp_path_factory, small_overrides) -> Path:
    """A workdir with the prior, target, extract and backbone artifacts of a small run."""
    workdir = tmp_path_factory.mktemp("verify")
    run = small_run(small_overrides)
    for stage in ("prior", "target", "extract", "backbone"):
        run_stage(stage, run, workdir)
    return workdir


@pytest.fixture()
def workdir(built, tmp_path) -> Path:
    """A private copy of ``built`` to damage."""
    return Path(shutil.copytree(built, tmp_path / "wd"))


def artifact(workdir: Path, stage: str) -> Path:
    (path,) = [p for p in (workdir / stage).iterdir() if (p / MANIFEST).is_file()]
    return path


def problems(report) -> dict[Path, str]:
    return {f.path: f.kind for f in report.findings if f.problem}


def live_lease(path: Path, host: str | None = None, pid: int | None = None) -> None:
    body = {
        "host": host or host_name(),
        "pid": pid or os.getpid(),
        "token": "t",
        "expires": time.time() + 600,
    }
    path.write_text(json.dumps(body) + "\n")


# --- verify -------------------------------------------------------------------------------
def test_a_clean_workdir_verifies(workdir):
    report = verify_workdir(workdir)
    assert report.ok, report.findings
    assert report.artifacts == 4
    assert report.files > 20  # every chunk, table, checkpoint and JSON file


def test_a_flipped_chunk_is_named(workdir):
    chunk = artifact(workdir, "extract") / STORE / "train" / "L1H0" / "c" / "1" / "0"
    flip_bytes(chunk)
    report = verify_workdir(workdir)
    assert problems(report) == {chunk: CORRUPT}
    assert "checksum" in report.findings[0].detail


def test_corrupt_zarr_metadata_names_the_file_and_its_array(workdir):
    store = artifact(workdir, "extract") / STORE
    meta = store / "test" / "L1.attn" / "zarr.json"
    meta.write_text(meta.read_text()[:-30])
    (store / "zarr.json").write_text("[]")
    report = verify_workdir(workdir)
    assert problems(report) == {meta: CORRUPT, store / "zarr.json": CORRUPT}
    details = {f.path: f.detail for f in report.findings}
    assert details[meta].startswith("metadata of node test/L1.attn: JSONDecodeError")
    assert details[store / "zarr.json"].startswith("metadata of root group: ValueError")
    # every other array is still read back, chunk by chunk
    assert report.files > 20


def test_a_flipped_parquet_file_is_named(workdir):
    # bytes of the footer (metadata and its length): polars writes no page checksums, so a flip
    # inside a data page is found only where it breaks decoding (see storage.verify)
    split = artifact(workdir, "prior") / "train.parquet"
    flip_bytes(split, at=(split.stat().st_size - 12) / split.stat().st_size)
    assert problems(verify_workdir(workdir)) == {split: CORRUPT}


def test_a_broken_manifest_is_corrupt(workdir):
    manifest = artifact(workdir, "target") / MANIFEST
    manifest.write_text('{"stage": "target", "key": "')
    assert problems(verify_workdir(workdir)) == {manifest: CORRUPT}


def test_partials_and_orphans(workdir):
    stale = workdir / "extract" / ".partial-dead"
    stale.mkdir()
    live_lease(workdir / "extract" / ".dead.lease", pid=2**22 + 12345)  # a pid that is not alive
    running = workdir / "backbone" / ".partial-busy"
    running.mkdir()
    live_lease(workdir / "backbone" / ".busy.lease")
    stray = workdir / "prior" / "notes.txt"
    stray.write_text("x")
    unfinished = workdir / "prior" / "0123abcd"
    unfinished.mkdir()
    report = verify_workdir(workdir)
    assert problems(report) == {stale: STALE, stray: ORPHANED, unfinished: ORPHANED}
    assert [f.path for f in report.findings if f.kind == IN_PROGRESS] == [running]
    (workdir / "label" / "features").mkdir(parents=True)  # the label caches are no orphans
    (workdir / "label" / "labeller.sqlite").write_bytes(b"")
    assert problems(verify_workdir(workdir)) == problems(report)


# --- a stage that reads a corrupt input ---------------------------------------------------
def test_reading_a_corrupt_chunk_names_it(workdir):
    extract = artifact(workdir, "extract")
    chunk = extract / STORE / "test" / "L0H1" / "c" / "0" / "0"
    flip_bytes(chunk)
    store = ActivationStore(extract)
    assert store.read("test", "L1H0").shape[0] == 40  # other arrays still read
    with pytest.raises(CorruptActivations, match=r"test/L0H1 rows 0:40") as e:
        store.read("test", "L0H1")
    assert str(chunk) in str(e.value)


def test_the_controls_stage_fails_on_a_corrupt_input(workdir, small_overrides):
    chunk = artifact(workdir, "extract") / STORE / "test" / "L0H1" / "c" / "0" / "0"
    flip_bytes(chunk)
    with pytest.raises(CorruptActivations, match=str(chunk)):
        run_stage("controls", small_run(small_overrides), workdir)
    assert not [p for p in (workdir / "controls").iterdir() if (p / MANIFEST).exists()]


# --- gc -----------------------------------------------------------------------------------
def commit(store: ArtifactStore, stage: str, key: str, inputs: dict, created: str) -> Path:
    out = store.begin(stage, key, resumable=False)
    (out / "data.bin").write_bytes(b"x" * 1000)
    return store.commit(stage, key, {"inputs": inputs, "created": created}).path


@pytest.fixture()
def chains(tmp_path) -> tuple[Path, dict[str, Path]]:
    """Two runs to fcr (old and new, sharing a prior), a run stopped at extract, a dead
    partial build."""
    store = ArtifactStore(tmp_path)
    p = {
        "prior": commit(store, "prior", "p", {}, "2026-01-01"),
        "old_extract": commit(store, "extract", "e0", {"prior": "p"}, "2026-01-01"),
        "old_fcr": commit(store, "fcr", "f0", {"extract": "e0"}, "2026-01-02"),
        "new_extract": commit(store, "extract", "e1", {"prior": "p"}, "2026-01-03"),
        "new_fcr": commit(store, "fcr", "f1", {"extract": "e1"}, "2026-01-04"),
        "unfinished": commit(store, "extract", "e2", {"prior": "p"}, "2026-01-05"),
    }
    p["partial"] = store.begin("sample", "s9", resumable=True)
    (p["partial"] / "part.parquet").write_bytes(b"y" * 500)
    return tmp_path, p


def test_gc_dry_run_removes_nothing(chains):
    workdir, p = chains
    before = sorted(workdir.rglob("*"))
    report = collect_garbage(workdir, dry_run=True)
    assert {r.path for r in report.removed} == {p["partial"], p["unfinished"]}
    assert report.freed > 1500
    assert sorted(workdir.rglob("*")) == before


def test_gc_keeps_what_kept_results_reference(chains):
    workdir, p = chains
    report = collect_garbage(workdir)
    assert {r.path for r in report.removed} == {p["partial"], p["unfinished"]}
    assert not p["partial"].exists() and not p["unfinished"].exists()
    for name in ("prior", "old_extract", "old_fcr", "new_extract", "new_fcr"):
        assert (p[name] / MANIFEST).is_file(), name
    assert verify_workdir(workdir).ok


def test_gc_keep_newest(chains):
    workdir, p = chains
    report = collect_garbage(workdir, keep=1)
    assert report.kept_results == ["f1"]
    assert {r.path for r in report.removed} == {
        p["partial"],
        p["unfinished"],
        p["old_fcr"],
        p["old_extract"],
    }
    assert (p["prior"] / MANIFEST).is_file()  # the kept fcr reaches it through e1


def test_gc_never_touches_what_a_live_run_holds(chains):
    workdir, p = chains
    live_lease(workdir / "sample" / ".s9.lease")
    report = collect_garbage(workdir, keep=1)
    assert p["partial"].is_dir()
    # while a build runs, no committed artifact goes: its inputs cannot be told
    assert report.removed == []
    assert (p["old_extract"] / MANIFEST).is_file()
    (workdir / "sample" / ".s9.lease").unlink()
    live_lease(workdir / "extract" / ".e0.lease", host="another-host")
    report = collect_garbage(workdir, keep=1)
    assert {r.path for r in report.removed} == {p["partial"]}  # its lock is gone
    assert (p["old_extract"] / MANIFEST).is_file()  # locked by a live run on another host
    assert (p["old_fcr"] / MANIFEST).is_file() and (p["unfinished"] / MANIFEST).is_file()
    assert p["old_extract"] in {path for path, _ in report.skipped}


def test_gc_takes_over_a_dead_holder(chains):
    workdir, p = chains
    live_lease(workdir / "sample" / ".s9.lease", pid=2**22 + 12345)  # dead pid on this host
    report = collect_garbage(workdir)
    assert p["partial"] in {r.path for r in report.removed}
    assert not p["partial"].exists()
    assert not (workdir / "sample" / ".s9.lease").exists()


def test_gc_without_results_keeps_committed_artifacts(tmp_path):
    store = ArtifactStore(tmp_path)
    extract = commit(store, "extract", "e", {}, "2026-01-01")
    assert collect_garbage(tmp_path).removed == []
    assert (extract / MANIFEST).is_file()


def test_a_flipped_byte_in_a_parquet_data_page_is_found(tmp_path):
    """Tables are written with page checksums, so a flip inside a data page is caught."""
    import polars as pl
    import pyarrow.parquet as pq
    import pytest

    from inversescope.storage.tables import write_parquet_atomic

    path = tmp_path / "t.parquet"
    write_parquet_atomic(pl.DataFrame({"x": list(range(5000))}), path)
    meta = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = meta.data_page_offset
    raw = bytearray(path.read_bytes())
    raw[start + meta.total_compressed_size // 2] ^= 0xFF  # inside the data page
    path.write_bytes(bytes(raw))
    with pytest.raises(OSError):
        pq.ParquetFile(path, page_checksum_verification=True).read()
