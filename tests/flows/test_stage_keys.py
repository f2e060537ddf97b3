"""What an edit reruns: the keys of the stages it touches change, and only those."""

from pathlib import Path

import pytest

from inversescope.config import load_run_config
from inversescope.flows.stage import run_keys
from inversescope.tasks import candidates, icl_features, icl_slots, ioi, ioi_features, ioi_slots


def _keys_after_editing(path: Path, run) -> dict[str, str]:
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# an edit\n")
        return run_keys(run)
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize(
    ("preset", "module"), [("ioi-tiny", ioi_features), ("icl-tiny", icl_features)]
)
def test_editing_a_builtin_feature_reruns_only_label_and_fcr(small, preset, module):
    run = load_run_config(preset, small if preset == "ioi-tiny" else [])
    before = run_keys(run)
    after = _keys_after_editing(Path(module.__file__), run)
    assert {n for n in before if before[n] != after[n]} == {"label", "fcr", "hypotheses"}
    assert run_keys(run) == before  # restored


@pytest.mark.parametrize(
    ("preset", "module"),
    [("ioi-tiny", ioi_slots), ("icl-tiny", icl_slots), ("ioi-tiny", candidates)],
)
def test_editing_a_slot_or_candidate_reruns_only_hypotheses(small, preset, module):
    run = load_run_config(preset, small if preset == "ioi-tiny" else [])
    before = run_keys(run)
    after = _keys_after_editing(Path(module.__file__), run)
    assert {n for n in before if before[n] != after[n]} == {"hypotheses"}


def test_hypotheses_settings_key_only_hypotheses(small):
    base = run_keys(load_run_config("ioi-tiny", small))
    more = run_keys(load_run_config("ioi-tiny", [*small, "hypotheses.permutations=20000"]))
    assert {n for n in base if base[n] != more[n]} == {"hypotheses"}


def test_editing_the_prior_reruns_everything(small):
    run = load_run_config("ioi-tiny", small)
    before = run_keys(run)
    after = _keys_after_editing(Path(ioi.__file__), run)
    assert all(before[n] != after[n] for n in before)


def test_sampling_only_settings_keep_the_trained_controls(small):
    base = load_run_config("ioi-tiny", [*small, "controls.method=inversionview"])
    noisier = load_run_config(
        "ioi-tiny",
        [*small, "controls.method=inversionview", "controls.inversionview.sample_noise_scale=0.5"],
    )
    a, b = run_keys(base), run_keys(noisier)
    assert a["controls"] == b["controls"] and a["sample"] != b["sample"]
