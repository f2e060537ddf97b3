"""Sharded extract and sample: any grouping of shards, run in any order, writes exactly what the
one-process build writes (compared byte for byte), and a rerun skips what markers cover."""

import pytest

from inversescope.config import load_run_config
from inversescope.flows.stage import commit_stage, plan_stage, run_keys, run_stage, run_stage_shard
from inversescope.storage import shards
from inversescope.storage.activations import STORE
from inversescope.storage.layout import read_samples

UPSTREAM = ("prior", "target", "backbone", "controls")


def sharded(name, run, workdir, keys, n_shards, reverse=True):
    plan = plan_stage(name, run, workdir, keys, n_shards)
    todo = plan["shards"]
    for shard in reversed(todo) if reverse else todo:
        run_stage_shard(name, run, workdir, keys, shard)
    return commit_stage(name, run, workdir, keys, plan["started"]), todo


def test_plan_shards_are_chunk_aligned_and_cover_every_row():
    rows = {"train": 70, "test": 20}
    one_each = shards.row_ranges(rows, 16, None)
    assert [(s["split"], s["start"], s["stop"]) for s in one_each][:2] == [
        ("train", 0, 16),
        ("train", 16, 32),
    ]
    assert len(one_each) == 5 + 2
    for n in (1, 2, 3, 7, 50):
        plan = shards.row_ranges(rows, 16, n)
        assert all(s["start"] % 16 == 0 for s in plan)
        for split, total in rows.items():
            covered = sorted((s["start"], s["stop"]) for s in plan if s["split"] == split)
            assert covered[0][0] == 0 and covered[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False))


@pytest.mark.parametrize("n_shards", [3])
def test_sharded_stages_equal_the_local_build(tmp_path, small, n_shards, artifact_files):
    over = [*small, "sample.group_size=2"]  # 3 references: two blocks per site
    run = load_run_config("ioi-tiny", over)
    keys = run_keys(run)
    local, fanned = tmp_path / "local", tmp_path / "fanned"
    for name in ("prior", "target", "extract", "backbone", "controls", "sample"):
        run_stage(name, run, local, keys)
    for name in ("prior", "target"):
        run_stage(name, run, fanned, keys)
    extract, planned = sharded("extract", run, fanned, keys, n_shards)
    # 3 train chunks + 1 test chunk; a shard never spans two splits
    assert extract.status == "ran" and len(planned) == max(min(n_shards, 4), 2)
    for name in ("backbone", "controls"):
        run_stage(name, run, fanned, keys)
    sample, units = sharded("sample", run, fanned, keys, n_shards)
    assert sample.status == "ran" and len(units) == min(n_shards, 6)  # 3 sites x 2 blocks
    for name in ("extract", "sample"):
        a = artifact_files(local / name / keys[name])
        b = artifact_files(fanned / name / keys[name])
        assert a.keys() == b.keys() and a == b, name
        assert any(k.startswith(STORE if name == "extract" else "samples/") for k in a)
    assert read_samples(fanned / "sample" / keys["sample"]).height == 3 * 3 * 4
    # a rerun finds the committed artifacts
    again = plan_stage("sample", run, fanned, keys, n_shards)
    assert again["cached"]["status"] == "cached"


def test_a_rerun_runs_only_the_shards_without_a_marker(tmp_path, small):
    run = load_run_config("ioi-tiny", [*small, "extract.chunk_rows=32"])
    keys = run_keys(run)
    for name in ("prior", "target"):
        run_stage(name, run, tmp_path, keys)
    first = plan_stage("extract", run, tmp_path, keys, 4)["shards"]
    run_stage_shard("extract", run, tmp_path, keys, first[0])
    run_stage_shard("extract", run, tmp_path, keys, first[2])  # then "killed"
    # planned again, with another shard count: only the rows no marker covers remain
    left = plan_stage("extract", run, tmp_path, keys, 4)["shards"]
    assert [s["id"] for s in left] == [s["id"] for i, s in enumerate(first) if i not in (0, 2)]
    with pytest.raises(RuntimeError, match="no done-marker"):
        commit_stage("extract", run, tmp_path, keys, 0.0)
    for shard in left:
        run_stage_shard("extract", run, tmp_path, keys, shard)
    assert commit_stage("extract", run, tmp_path, keys, 0.0).status == "ran"
