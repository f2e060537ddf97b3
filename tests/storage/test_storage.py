import json

import pytest

from inversescope.storage.artifacts import MANIFEST, ArtifactStore
from inversescope.storage.keys import code_hash, module_closure, stage_key


def test_module_closure_follows_project_imports():
    names = [n for n, _ in module_closure("inversescope.flows.stage_extract")]
    assert "inversescope.flows.stage_extract" in names
    assert "inversescope.extraction" in names
    assert "inversescope.storage.activations" in names
    assert "inversescope.storage.layout" in names  # readers of other stages' artifacts
    assert not any(n.startswith("inversescope.flows.stage_t") for n in names)  # no other stage
    assert not any(n.startswith("inversescope.tasks.ioi") for n in names)
    assert "inversescope.flows.pipeline" not in names  # prefect wiring is not stage code
    # a root's imports inside functions count: the fcr stage draws its plots
    assert "inversescope.plots" in [n for n, _ in module_closure("inversescope.flows.stage_fcr")]
    # a lower module's do not: storage.layout loads core.methods only to read a checkpoint
    prior = [n for n, _ in module_closure("inversescope.flows.stage_prior")]
    assert "inversescope.storage.layout" in prior and "inversescope.core.methods" not in prior


def test_key_changes_with_config_inputs_and_code(tmp_path):
    base = stage_key("s", {"a": 1}, {"prior": "k1"}, "c")
    assert base == stage_key("s", {"a": 1}, {"prior": "k1"}, "c")
    assert base != stage_key("s", {"a": 2}, {"prior": "k1"}, "c")
    assert base != stage_key("s", {"a": 1}, {"prior": "k2"}, "c")
    assert base != stage_key("s", {"a": 1}, {"prior": "k1"}, "d")
    f = tmp_path / "feature.py"
    f.write_text("def f(x):\n    return 1\n")
    h1 = code_hash(("inversescope.core.sites",), (f,))
    f.write_text("def f(x):\n    return 2\n")
    assert h1 != code_hash(("inversescope.core.sites",), (f,))


def test_artifact_visible_only_after_commit(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.lock("s", "k"):
        partial = store.begin("s", "k", resumable=False)
        (partial / "data.txt").write_text("x")
        assert store.lookup("s", "k") is None
        art = store.commit("s", "k", {"metrics": {"n": 1}})
    assert store.lookup("s", "k") == art
    assert (art.path / "data.txt").read_text() == "x"
    assert art.manifest["versions"]["torch"]
    assert not store.partial_path("s", "k").exists()


def test_folder_without_valid_manifest_is_not_a_hit(tmp_path):
    store = ArtifactStore(tmp_path)
    path = store.path("s", "k")
    path.mkdir(parents=True)
    assert store.lookup("s", "k") is None  # folder exists, no manifest
    (path / MANIFEST).write_text("{trunc")
    assert store.lookup("s", "k") is None  # torn manifest
    (path / MANIFEST).write_text(json.dumps({"stage": "s", "key": "other"}))
    assert store.lookup("s", "k") is None  # someone else's manifest
    with pytest.raises(FileNotFoundError, match="s/k"):
        store.require("s", "k")


def test_non_resumable_stage_starts_clean_resumable_keeps(tmp_path):
    store = ArtifactStore(tmp_path)
    p = store.begin("s", "k", resumable=True)
    (p / "chunk").write_text("1")
    assert (store.begin("s", "k", resumable=True) / "chunk").exists()
    assert not (store.begin("s", "k", resumable=False) / "chunk").exists()
