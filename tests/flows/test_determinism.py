"""One key, one result: stages that train are bitwise reproducible."""

import hashlib
import types

import pytest
import torch

from inversescope.config import load_run_config
from inversescope.flows.stage import run_keys, run_stage, seeded
from inversescope.storage.artifacts import ArtifactStore


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def test_encoder_index_backward_is_deterministic_when_seeded():
    """The backward of indexing per-site encoders by repeated site indices accumulates in
    parallel on CPU; under ``seeded`` torch's deterministic algorithms order it."""
    stage = types.SimpleNamespace(SEEDED=True)
    enc = torch.randn(20, 128, 128, requires_grad=True)  # (S, d, d), as the site encoders
    idx = torch.randint(0, 20, (64,))  # (B,) with repeats
    grad_out = torch.randn(64, 128, 128)
    seen = set()
    with seeded(stage, 0) as nondeterministic:
        for _ in range(5):
            enc.grad = None
            (enc[idx] * grad_out).sum().backward()
            seen.add(_digest(enc.grad))
    assert len(seen) == 1 and nondeterministic == []
    assert not torch.are_deterministic_algorithms_enabled()  # restored afterwards


def test_seeded_builds_skip_the_nan_fill_of_new_tensors_and_restore_it():
    """Deterministic mode fills every new tensor with NaN unless told not to: a debugging aid
    that no value depends on, skipped inside a seeded build and restored after it."""
    stage = types.SimpleNamespace(SEEDED=True)
    assert torch.utils.deterministic.fill_uninitialized_memory
    with seeded(stage, 0):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory
    assert torch.utils.deterministic.fill_uninitialized_memory


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_controls_trained_twice_are_bit_identical(small, tmp_path, precision):
    """Under bfloat16 autocast too (native on AMX, emulated elsewhere: deterministic either
    way); the manifest says which precision ran."""
    run = load_run_config(
        "ioi-tiny", [*small, "controls.train.steps=20", f"controls.train.precision={precision}"]
    )
    keys = run_keys(run)
    states = []
    for wd in (tmp_path / "a", tmp_path / "b"):
        for name in ("prior", "target", "extract", "backbone", "controls"):
            run_stage(name, run, wd, keys)
        art = ArtifactStore(wd).require("controls", keys["controls"])
        assert art.manifest["metrics"]["nondeterministic_ops"] == []
        assert art.manifest["metrics"]["precision"] == precision
        states.append(torch.load(art.path / "controls.pt", weights_only=True)["state"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_killed_controls_resume_to_the_same_weights(small, tmp_path, monkeypatch, caplog):
    """Controls training that dies at step 13 (checkpoints every 5 steps) resumes on the rerun
    from step 10, and commits the weights of an uninterrupted training; the checkpoint is not
    part of the artifact."""
    import shutil

    from inversescope.core import pairs

    run = load_run_config("ioi-tiny", [*small, "controls.train.steps=20"])
    resumable = run.model_copy(
        update={
            "controls": run.controls.model_copy(
                update={"train": run.controls.train.model_copy(update={"checkpoint_every": 5})}
            )
        }
    )
    keys = run_keys(run)
    assert run_keys(resumable) == keys  # how often it checkpoints is in no key
    a, b = tmp_path / "a", tmp_path / "b"
    for name in ("prior", "target", "extract", "backbone", "controls"):
        run_stage(name, run, a, keys)
    for name in ("prior", "target", "extract", "backbone"):
        shutil.copytree(a / name, b / name)

    real_next = pairs.ActivationBatches.__next__
    calls = {"train": 0}

    def dying_next(self):
        calls["train"] += 1  # the first four batches are the held-out ones
        if calls["train"] > 4 + 13:
            raise KeyboardInterrupt  # as a kill would stop it: nothing after runs
        return real_next(self)

    monkeypatch.setattr(pairs.ActivationBatches, "__next__", dying_next)
    with pytest.raises(KeyboardInterrupt):
        run_stage("controls", resumable, b, keys)
    monkeypatch.setattr(pairs.ActivationBatches, "__next__", real_next)
    store = ArtifactStore(b)
    assert store.lookup("controls", keys["controls"]) is None
    assert (store.partial_path("controls", keys["controls"]) / "train-state.pt").exists()
    with caplog.at_level("INFO"):
        run_stage("controls", resumable, b, keys)
    assert "resuming from the checkpoint at step 10 of 20" in caplog.text
    art = store.require("controls", keys["controls"])
    assert not (art.path / "train-state.pt").exists()
    want = torch.load(a / "controls" / keys["controls"] / "controls.pt", weights_only=True)
    got = torch.load(art.path / "controls.pt", weights_only=True)
    assert all(torch.equal(want["state"][k], got["state"][k]) for k in want["state"])
    assert (
        art.manifest["metrics"]["loss_curve"]
        == ArtifactStore(a).require("controls", keys["controls"]).manifest["metrics"]["loss_curve"]
    )
