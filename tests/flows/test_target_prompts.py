"""``target.train_prompts``: the generators' prior can grow while the target stays the same."""

import pytest
from safetensors.torch import load_file

from inversescope.config import ConfigError, check_run, load_run_config
from inversescope.flows.stage import run_keys, run_stage
from inversescope.storage.artifacts import ArtifactStore


def _target(over: list[str], workdir) -> tuple[str, dict]:
    run = load_run_config("ioi-tiny", over)
    keys = run_keys(run, ("prior", "target"))
    for name in ("prior", "target"):
        run_stage(name, run, workdir, keys)
    art = ArtifactStore(workdir).require("target", keys["target"])
    return keys["target"], load_file(art.path / "model" / "model.safetensors")


def test_a_target_on_the_first_prompts_of_a_larger_prior_is_the_smaller_priors(small, tmp_path):
    key_small, small_weights = _target(small, tmp_path)
    key_big, big_weights = _target(
        [*small, "prior.n_train=600", "target.train_prompts=300"], tmp_path
    )
    assert key_big != key_small  # another prior: another key, rebuilt
    assert small_weights.keys() == big_weights.keys()
    for name, w in small_weights.items():
        assert (w == big_weights[name]).all(), name


def test_train_prompts_are_at_most_the_prior_and_checked_up_front(small):
    # more than the prior holds: all of it (a smaller prior under a preset that sets it)
    check_run(load_run_config("ioi-tiny", [*small, "target.train_prompts=20000"]))
    with pytest.raises(ConfigError, match="too few to train the target"):
        check_run(load_run_config("ioi-tiny", ["target.train_prompts=10"]))
