"""The backbone from the target's weights (``backbone.source: target``) and without fine-tuning
(``backbone.finetune: none``): ioi-tiny's defaults, as the paper's IOI setup (GPT-2 small is
both target and backbone)."""

from __future__ import annotations

import pytest
import torch

from inversescope.config import ConfigError, load_run_config
from inversescope.flows.stage import run_keys
from inversescope.storage import layout
from inversescope.storage.artifacts import ArtifactStore


def test_a_backbone_that_trains_nothing_must_start_from_a_model(small):
    with pytest.raises(ConfigError, match="backbone.finetune=none with backbone.source=train"):
        load_run_config("ioi-tiny", [*small, "backbone.source=train", "backbone.finetune=none"])


def test_an_unused_schedule_is_in_no_key(small):
    base = load_run_config("ioi-tiny", small)
    assert (base.backbone.source, base.backbone.finetune) == ("target", "none")
    other = load_run_config(
        "ioi-tiny", [*small, "backbone.train.steps=999", "backbone.arch.n_layer=3"]
    )
    assert run_keys(base, ("backbone",))["backbone"] == run_keys(other, ("backbone",))["backbone"]
    trained = load_run_config("ioi-tiny", [*small, "backbone.finetune=full"])
    assert run_keys(trained, ("backbone",))["backbone"] != run_keys(base, ("backbone",))["backbone"]


def test_the_backbone_is_the_targets_weights_and_tokenizer(small_run):
    workdir, run, results = small_run
    store = ArtifactStore(workdir)
    backbone, tok_b = layout.load_backbone(store.require("backbone", results["backbone"].key))
    target, tok_t = layout.load_target(store.require("target", results["target"].key))
    want, got = target.state_dict(), backbone.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert tok_b.get_vocab() == tok_t.get_vocab()
    metrics = store.require("backbone", results["backbone"].key).manifest["metrics"]
    assert metrics["steps"] == 0 and metrics["held_out_loss"] > 0
