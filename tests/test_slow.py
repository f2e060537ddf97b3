"""The embedded preset's real target: trained here, it must solve IOI (slow: a few minutes)."""

import pytest

from inversescope.flows.config import load_run_config
from inversescope.flows.stage import run_keys, run_stage
from inversescope.storage.artifacts import ArtifactStore


@pytest.mark.slow
def test_ioi_tiny_target_completes_the_indirect_object(tmp_path):
    run = load_run_config("ioi-tiny")
    keys = run_keys(run, ("prior", "target"))
    run_stage("prior", run, tmp_path, keys)
    result = run_stage("target", run, tmp_path, keys)
    metrics = ArtifactStore(tmp_path).require("target", result.key).manifest["metrics"]
    assert metrics["test_accuracy"] >= 0.9
