"""Fan-out on Dask (a LocalCluster of 2 worker processes, through prefect-dask): the same bytes
as a local run, and a worker killed mid-stage costs only its shards on the rerun."""

import os
import shutil

import dask
import pytest
from distributed import KilledWorker

from inversescope.config import load_run_config
from inversescope.flows.pipeline import flow_for
from inversescope.flows.stage import run_keys
from inversescope.storage import shards
from inversescope.storage.artifacts import ArtifactStore
from inversescope.storage.layout import read_samples

pytestmark = pytest.mark.slow
DASK = ["runner.kind=dask", "runner.n_workers=2", "runner.shards=3"]
FANNED = ("extract", "sample")


@pytest.fixture()
def api_url(prefect_harness, monkeypatch):
    """Dask workers are other processes: they reach the harness's server through the env."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())


def _over(small):
    return [*small, "sample.group_size=2", "extract.chunk_rows=64"]


def test_dask_writes_the_bytes_a_local_run_writes(api_url, small, tmp_path, artifact_files):
    local = load_run_config("ioi-tiny", _over(small))
    fanned = load_run_config("ioi-tiny", [*_over(small), *DASK])
    keys = run_keys(local)
    assert keys == run_keys(fanned)  # where stages run is in no key
    a = flow_for("ioi")(local, str(tmp_path / "local"), "sample")["stages"]
    # the trained models come from the local run: training on CPU depends on the torch thread
    # count in the last float bits, and a worker has its own; what fans out must not
    for name in ("prior", "target", "backbone", "controls"):
        shutil.copytree(tmp_path / "local" / name, tmp_path / "dask" / name)
    b = flow_for("ioi")(fanned, str(tmp_path / "dask"), "sample")["stages"]
    assert {n: r["status"] for n, r in b.items() if r["status"] == "ran"} == dict.fromkeys(
        FANNED, "ran"
    )
    for name in FANNED:
        want = artifact_files(tmp_path / "local" / name / a[name]["key"])
        got = artifact_files(tmp_path / "dask" / name / b[name]["key"])
        assert want.keys() == got.keys() and want == got, name
    markers = shards.read_markers(tmp_path / "dask" / "extract" / keys["extract"])
    # 300 + 40 rows in 64-row chunks: 5 + 1 chunks in 3 groups, the last split at the split's
    # end (a shard never spans two splits)
    assert sorted(markers) == [
        "test-0000000000",
        "train-0000000000",
        "train-0000000128",
        "train-0000000256",
    ]
    assert read_samples(tmp_path / "dask" / "sample" / keys["sample"]).height == 36
    again = flow_for("ioi")(fanned, str(tmp_path / "dask"), "sample")["stages"]
    assert {r["status"] for r in again.values()} == {"cached"}


@pytest.mark.parametrize("stage", FANNED)
def test_a_killed_worker_costs_only_its_shards(api_url, small, tmp_path, monkeypatch, stage):
    run = load_run_config("ioi-tiny", [*_over(small), *DASK, "runner.shards=6"])
    keys = run_keys(run)
    victim = "train-0000000128" if stage == "extract" else "L1H0-00000"
    monkeypatch.setenv("INVERSESCOPE_FAULT", f"{stage}:{victim}:{tmp_path / 'fired'}")
    # no retry on another worker: the killed shard fails the run, as a lost node would
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        pytest.raises(KilledWorker),
    ):
        flow_for("ioi")(run, str(tmp_path), "sample")
    assert (tmp_path / "fired").exists()
    store = ArtifactStore(tmp_path)
    partial = store.partial_path(stage, keys[stage])
    before = {
        sid: shards.marker_path(partial, sid).stat().st_mtime_ns
        for sid in shards.read_markers(partial)
    }
    assert victim not in before  # killed before its marker
    out = flow_for("ioi")(run, str(tmp_path), "sample")["stages"]
    assert out[stage]["status"] == "ran"
    final = store.path(stage, keys[stage])
    after = {
        sid: shards.marker_path(final, sid).stat().st_mtime_ns for sid in shards.read_markers(final)
    }
    # shards done before the kill were not redone; the rest, the victim among them, were
    assert {s: after[s] for s in before} == before
    assert victim in after and set(after) > set(before)
    manifest = store.require(stage, keys[stage]).manifest
    assert manifest["stage"] == stage and os.path.isdir(final)


def test_the_cli_runs_on_dask_and_exits(small, tmp_path):
    """The real entry point: a temporary server for the workers, every stage, and an exit that
    does not hang on Prefect's workers retrying against a stopped server."""
    import json
    import subprocess
    import sys

    import yaml

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"preset": "ioi-tiny"}))
    args = [a for o in [*small, *DASK] for a in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "inversescope.flows.cli", "run", str(cfg), *args, "--json",
         "--workdir", str(tmp_path / "wd")],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    stages = json.loads(done.stdout)["stages"]
    assert {r["status"] for r in stages.values()} == {"ran"}
