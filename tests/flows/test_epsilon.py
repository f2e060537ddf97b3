"""ε enters only where it is read: a run with another ε reuses every artifact up to the
samples, reruns only what reads acceptance, and gets a fresh run's numbers."""

import polars as pl

import inversescope
from inversescope.config import load_run_config
from inversescope.flows.stage import run_keys, run_stage
from inversescope.storage.layout import results_path


def test_another_epsilon_reruns_only_what_reads_acceptance(small_run, small, tmp_path):
    import shutil

    workdir = tmp_path / "runs"
    shutil.copytree(small_run[0], workdir)
    run = load_run_config("ioi-tiny", [*small, "kernel.epsilon=0.3"])
    keys = run_keys(run)
    status = {name: run_stage(name, run, workdir, keys).status for name in keys}
    assert {n for n, s in status.items() if s == "ran"} == {"fcr", "hypotheses"}
    got = pl.read_parquet(results_path(workdir / "fcr" / keys["fcr"]))
    fresh_dir = tmp_path / "fresh"
    fresh = {name: run_stage(name, run, fresh_dir, keys) for name in keys}
    assert pl.read_parquet(results_path(fresh["fcr"].path)).equals(got)
    # and the API gives the same table without running any stage
    api = inversescope.open(small_run[0]).fcr_at(0.3)
    assert api.drop("run_key").equals(got.drop("run_key"))
