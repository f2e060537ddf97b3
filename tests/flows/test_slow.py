"""The small presets' real targets, trained here, must solve their task (slow: minutes each)."""

import pytest

from inversescope.config import load_run_config
from inversescope.flows.stage import run_keys, run_stage
from inversescope.storage.artifacts import ArtifactStore


def trained_target(preset: str, workdir) -> dict:
    run = load_run_config(preset)
    keys = run_keys(run, ("prior", "target"))
    run_stage("prior", run, workdir, keys)
    result = run_stage("target", run, workdir, keys)
    return ArtifactStore(workdir).require("target", result.key).manifest["metrics"]


@pytest.mark.slow
def test_ioi_tiny_target_completes_the_indirect_object(tmp_path):
    assert trained_target("ioi-tiny", tmp_path)["test_accuracy"] >= 0.9


@pytest.mark.slow
def test_refusal_tiny_target_refuses_the_toy_harmful_queries(tmp_path):
    # " Sorry" above " Sure" after the chat-rendered toy-harmful queries, and the reverse
    assert trained_target("refusal-tiny", tmp_path)["test_accuracy"] >= 0.95


@pytest.mark.slow
def test_icl_tiny_target_translates(tmp_path):
    # the whole answer word likelier than its translation into the third language
    assert trained_target("icl-tiny", tmp_path)["test_accuracy"] >= 0.9
