"""The Prefect flow on a small config, under one session-scoped test harness."""

import json
from pathlib import Path

import pytest

from inversescope.config import load_run_config
from inversescope.flows.pipeline import flow_for
from inversescope.flows.stage import STAGE_ORDER
from inversescope.storage.activations import ActivationStore


@pytest.fixture()
def small_run(small):
    return load_run_config("ioi-tiny", small)


def test_flow_runs_then_everything_is_cached(prefect_harness, small_run, tmp_path):
    first = flow_for("ioi")(small_run, str(tmp_path))["stages"]
    assert tuple(first) == STAGE_ORDER
    assert {r["status"] for r in first.values()} == {"ran"}
    second = flow_for("ioi")(small_run, str(tmp_path))["stages"]
    assert {n: r["status"] for n, r in second.items()} == dict.fromkeys(first, "cached")
    assert {n: r["key"] for n, r in second.items()} == {n: r["key"] for n, r in first.items()}

    for name, r in first.items():
        path = Path(r["path"])
        assert path.name == r["key"] and path.parent.name == name
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["key"] == r["key"] and manifest["run"]["preset"] == "ioi-tiny"
    target = Path(first["target"]["path"])
    assert (target / "model" / "config.json").exists()
    assert (target / "tokenizer" / "tokenizer.json").exists()
    store = ActivationStore(Path(first["extract"]["path"]))
    assert store.read("train", "L1H0").shape == (300, 32)
    assert store.read("test", "L1.attn").shape == (40, 32)


def test_changing_extract_reuses_upstream(prefect_harness, small_run, tmp_path):
    first = flow_for("ioi")(small_run, str(tmp_path), "extract")["stages"]
    changed = small_run.model_copy(
        update={"extract": small_run.extract.model_copy(update={"sites": ["L0H0"]})}
    )
    second = flow_for("ioi")(changed, str(tmp_path), "extract")["stages"]
    assert second["prior"]["status"] == "cached" and second["target"]["status"] == "cached"
    assert second["extract"]["status"] == "ran"
    assert second["extract"]["key"] != first["extract"]["key"]


def test_until_stops_early(prefect_harness, small_run, tmp_path):
    out = flow_for("ioi")(small_run, str(tmp_path), "prior")["stages"]
    assert list(out) == ["prior"]
    assert not (tmp_path / "target").exists()


def test_scheduled_run_takes_the_config_as_a_dict(prefect_harness, small_run, tmp_path):
    out = flow_for("ioi")(small_run.model_dump(mode="json"), str(tmp_path), "prior")["stages"]
    assert out["prior"]["status"] == "ran"


def test_deployment_carries_the_run_config(small_run, tmp_path):
    from inversescope.flows.pipeline import deployment

    dep = deployment(small_run, str(tmp_path))
    assert dep.name == "ioi-tiny"
    assert dep.parameters["run"]["prior"]["n_train"] == 300
    assert "run" in dep._parameter_openapi_schema.properties  # the UI's form


@pytest.mark.parametrize(
    ("preset", "features"),
    [
        ("icl-tiny", {"task", "task_rule", "input"}),
        ("refusal-tiny", {"harmfulness", "reason", "method"}),
    ],
)
def test_every_task_runs_end_to_end(prefect_harness, small, preset, features, tmp_path):
    import polars as pl

    small = [o.replace("n_positions: 64", "n_positions: 96") for o in small]
    run = load_run_config(preset, small)
    out = flow_for(run.task)(run, str(tmp_path))["stages"]
    assert {r["status"] for r in out.values()} == {"ran"}
    label = json.loads((Path(out["label"]["path"]) / "manifest.json").read_text())
    assert set(label["metrics"]["feature_names"]) == features
    results = pl.read_parquet(Path(out["fcr"]["path"]) / "results.parquet")
    assert set(results["feature"]) == features and set(results["task"]) == {run.task}
    if run.task == "refusal":
        from inversescope.storage.label_cache import SqliteCache

        assert len(SqliteCache(tmp_path / "label" / "labeller.sqlite")) > 0
        reference = pl.read_parquet(Path(out["label"]["path"]) / "reference.parquet")
        assert reference["harmfulness"].is_not_null().all()  # test prompts carry file labels
    again = load_run_config(preset, [*small, "label.max_error_share=0.5"])
    second = flow_for(run.task)(again, str(tmp_path))["stages"]
    assert second["sample"]["status"] == "cached" and second["label"]["status"] == "ran"
    relabel = json.loads((Path(second["label"]["path"]) / "manifest.json").read_text())
    assert all(f["reused"] for f in relabel["metrics"]["features"].values())
