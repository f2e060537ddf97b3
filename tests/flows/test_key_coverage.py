"""Keys cover what a stage runs, and nothing else.

Completeness: every stage's build runs under a profiler, and every project module whose code
ran must be in the modules its key hashes (``flows.stage.stage_code`` and their imports).
Tightness: editing a copy of one module changes the keys of the stages that run it (and of
what reads their artifacts), and no others (a feature module, keyed by its file's content:
``test_stage_keys.py``).
"""

import sys
import threading
from pathlib import Path

import pytest

import inversescope
from inversescope.config import load_run_config
from inversescope.flows.stage import STAGE_ORDER, run_keys, run_stage, stage_code, stage_module
from inversescope.storage import keys
from inversescope.tasks.features import resolve_features

ROOT = Path(inversescope.__file__).resolve().parents[1]
FOLDERS = {"inversescope": "", "inversescope_core": "core", "tasks": "tasks",
           "storage": "storage", "flows": "flows"}  # fmt: skip


def _project_files() -> dict[str, str]:
    """file -> module name of every project module."""
    out = {}
    for folder, sub in FOLDERS.items():
        for path in (ROOT / folder).glob("*.py"):
            parts = ["inversescope", *([sub] if sub else [])]
            name = ".".join(parts + ([] if path.stem == "__init__" else [path.stem]))
            out[str(path.resolve())] = name
    return out


def test_every_module_a_build_runs_is_in_its_key(tmp_path, small, monkeypatch):
    run = load_run_config("ioi-tiny", small)
    stage_keys = run_keys(run)
    files = _project_files()
    missing = {}
    for name in STAGE_ORDER:
        mod = stage_module(name)
        real_build = mod.build
        ran: set[str] = set()

        def profile(frame, event, arg, ran=ran):
            if event == "call":
                ran.add(frame.f_code.co_filename)

        def traced(ctx, real_build=real_build, profile=profile):
            sys.setprofile(profile)
            threading.setprofile(profile)
            try:
                return real_build(ctx)
            finally:
                sys.setprofile(None)
                threading.setprofile(None)

        monkeypatch.setattr(mod, "build", traced)
        assert run_stage(name, run, tmp_path, stage_keys).status == "ran"
        covered = {n for n, _ in keys.module_closure(*stage_code(name, run))}
        # the run config's values enter every key through config_of, which reads them with
        # the same accessors (sample_sites) the build does
        covered.add("inversescope.config")
        if name == "label":  # feature modules enter the key by their files' content
            covered |= {s.module for s in resolve_features(run.task, run.features).values()}
        executed = {files[f] for f in ran if f in files}
        assert executed, f"{name}: the profiler saw no project code"
        if executed - covered:
            missing[name] = sorted(executed - covered)
    assert not missing, f"modules a build runs that its key does not hash: {missing}"


def _keys_after_editing(module: str, run, tmp_path: Path, monkeypatch) -> dict[str, str]:
    """Every key, with the source of ``module`` replaced by an edited copy."""
    real = keys._module_file
    original = real(module)
    assert original is not None, module
    copy = tmp_path / f"edited_{original.name}"
    copy.write_bytes(original.read_bytes() + b"\n# an edit\n")
    with monkeypatch.context() as m:
        m.setattr(keys, "_module_file", lambda name: copy if name == module else real(name))
        keys.module_closure.cache_clear()
        try:
            return run_keys(run)
        finally:
            keys.module_closure.cache_clear()


DOWNSTREAM_OF_CONTROLS = {"controls", "sample", "label", "fcr", "hypotheses"}


@pytest.mark.parametrize(
    ("module", "changed"),
    [
        ("inversescope.core.generator", DOWNSTREAM_OF_CONTROLS),
        # extract's own code does not run it; its key follows the target's, whose training does
        (
            "inversescope.core.lm_training",
            {"target", "extract", "backbone", *DOWNSTREAM_OF_CONTROLS},
        ),  # fmt: skip
        ("inversescope.scoring", {"fcr", "hypotheses"}),  # hypotheses reads the fcr artifact
        ("inversescope.storage.verify", set()),
        ("inversescope.flows.cli", set()),
        ("inversescope.flows.deploy", set()),
        ("inversescope.api", set()),
    ],
)
def test_an_edit_changes_the_keys_of_the_stages_that_run_it(
    module, changed, small, tmp_path, monkeypatch
):
    run = load_run_config("ioi-tiny", small)
    before = run_keys(run)
    after = _keys_after_editing(module, run, tmp_path, monkeypatch)
    assert {n for n in before if before[n] != after[n]} == changed
    assert run_keys(run) == before


def test_lm_training_is_not_in_the_prior_or_extract_keys(small):
    run = load_run_config("ioi-tiny", small)
    for name in ("prior", "extract"):
        modules = {n for n, _ in keys.module_closure(*stage_code(name, run))}
        assert "inversescope.core.lm_training" not in modules
        assert "inversescope.core.generator" not in modules
