"""The work-pool flows: names a worker sees, the UI's parameter form, preset + overrides through
the CLI's own checks, the DAG's edges and the ``gpu`` limit. ``tests/service`` deploys for
real against a server on PostgreSQL."""

from __future__ import annotations

import pytest

from inversescope.config import ConfigError, RunConfig, load_run_config
from inversescope.flows.pipeline import (
    GPU_LIMIT,
    TASK_FLOWS,
    gpu_stages,
    partial_config_of,
    presets_of,
    run_config_of,
    task_flow,
)
from inversescope.tasks import TASKS


@pytest.mark.parametrize("task", TASKS)
def test_a_worker_loading_the_entrypoint_sees_the_task_flow(task):
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(f"inversescope.flows.pipeline.{task}_flow")
    assert flow.name == f"inversescope-{task}"
    assert flow is task_flow(task)


def test_the_form_offers_the_presets_of_the_task_and_every_section_in_order():
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(TASK_FLOWS["ioi"]).model_dump()
    props = schema["properties"]
    assert props["preset"]["enum"] == list(presets_of("ioi")) and "ioi-tiny" in presets_of("ioi")
    assert all(load_run_config(p).task == "ioi" for p in presets_of("ioi"))
    config = schema["definitions"][props["config"]["$ref"].split("/")[-1]]
    sections = [n for n in RunConfig.model_fields if n not in ("preset", "task")]
    assert sorted(config["properties"], key=lambda n: config["properties"][n]["position"]) == (
        sections
    )
    for name, field in config["properties"].items():  # each with its description
        assert field["description"] == RunConfig.model_fields[name].description
    assert [n for n in sorted(props, key=lambda n: props[n]["position"])] == [
        "preset",
        "config",
        "overrides",
        "workdir",
        "until",
    ]


def test_preset_plus_changes_is_the_cli_run(small):
    run = run_config_of("ioi", "ioi-tiny", {"kernel": {"epsilon": 0.2, "delta": None}}, small)
    assert run == load_run_config("ioi-tiny", ["kernel.epsilon=0.2", *small])
    assert run_config_of("ioi", "ioi-tiny", None, None) == load_run_config("ioi-tiny")


@pytest.mark.parametrize(
    ("config", "overrides", "cli"),
    [
        ({"kernel": {"epsilon": -1}}, [], ["kernel.epsilon=-1"]),
        ({}, ["extract.sites=[L99H0]"], ["extract.sites=[L99H0]"]),
        ({"prior": {"n_tain": 3}}, [], ["prior.n_tain=3"]),
    ],
)
def test_a_bad_value_fails_with_the_cli_message(config, overrides, cli):
    from inversescope.config import check_run

    with pytest.raises(ConfigError) as expected:
        check_run(load_run_config("ioi-tiny", cli))
    with pytest.raises(ConfigError) as got:
        run_config_of("ioi", "ioi-tiny", config, overrides)
    assert str(got.value) == str(expected.value) and "\n" not in str(got.value)


def test_a_preset_of_another_task_is_refused():
    with pytest.raises(ConfigError, match="not a preset of task ioi; accepted: .*ioi-tiny"):
        run_config_of("ioi", "icl-tiny")


def test_a_yaml_config_becomes_preset_plus_changes(small, tmp_path):
    yml = tmp_path / "mine.yaml"
    yml.write_text("preset: ioi-tiny\nkernel: {epsilon: 0.3}\nseed: 7\n")
    run = load_run_config(str(yml), small)
    preset, partial, emptied = partial_config_of(run)
    assert preset == "ioi-tiny" and partial["seed"] == 7 and partial["kernel"] == {"epsilon": 0.3}
    assert "task" not in partial and "preset" not in partial and emptied == []
    assert run_config_of("ioi", preset, partial) == run
    bare = tmp_path / "bare.yaml"  # no preset: the task's default preset, every field differing
    bare.write_text(yml.read_text().replace("preset: ioi-tiny\n", "task: ioi\n"))
    full = load_run_config(str(bare), small)
    preset, partial, emptied = partial_config_of(full)
    assert run_config_of("ioi", preset, partial, emptied).model_dump(exclude={"preset"}) == (
        full.model_dump(exclude={"preset"})
    )


def test_fields_emptied_by_the_config_go_to_overrides(small):
    run = load_run_config("refusal-tiny", [*small, "labeller=null"])
    preset, partial, emptied = partial_config_of(run)
    assert preset == "refusal-tiny" and emptied == ["labeller=null"]
    assert "labeller" not in partial
    icl = load_run_config("icl-tiny", [*small, "prior.files=[]"])  # back to the shipped list
    assert partial_config_of(icl)[2] == ["prior.files=[]"]


def test_gpu_stages():
    run = load_run_config("ioi-tiny")
    assert gpu_stages(run) == {"target", "extract", "backbone", "controls", "sample"}
    assert gpu_stages(run.model_copy(update={"device": "cpu"})) == frozenset()
    refusal = load_run_config("refusal-tiny")
    assert ("label" in gpu_stages(refusal)) == (refusal.labeller is not None)


def test_deploy_needs_a_server():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from inversescope.flows.deploy import deploy

    run = load_run_config("ioi-tiny")
    with temporary_settings({PREFECT_API_URL: None}), pytest.raises(ConfigError, match="not set"):
        deploy(run, pool="p", workdir="/tmp/runs")
    with (
        temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}),
        pytest.raises(ConfigError, match="does not answer"),
    ):
        deploy(run, pool="p", workdir="/tmp/runs")


def test_cli_deploy_reports_a_bad_config_in_one_line(capsys):
    from inversescope.flows.cli import main

    assert main(["deploy", "nope", "--pool", "p"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("inversescope: error: unknown preset 'nope'") and "\n" not in err


def test_stages_wait_on_what_they_read_and_take_the_gpu_limit(
    prefect_harness, small, tmp_path, monkeypatch
):
    from contextlib import contextmanager

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from inversescope.flows import pipeline
    from inversescope.flows.stage import stage_module

    held = []  # slots in use on the server, seen from inside each stage that holds one
    real_slot = pipeline.gpu_slot

    @contextmanager
    def spy(use):
        with real_slot(use):
            if use:
                with get_client(sync_client=True) as c:
                    held.append(c.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots)
            yield

    monkeypatch.setattr(pipeline, "gpu_slot", spy)
    flow = task_flow("ioi")
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=1)
        )
        try:
            state = flow(
                overrides=small, workdir=str(tmp_path), until="backbone", return_state=True
            )
            assert state.is_completed()
            assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 0
        finally:
            client.delete_global_concurrency_limit_by_name(GPU_LIMIT)
        flow_run = state.state_details.flow_run_id
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run]))
        )
    name_of = {r.id: r.name for r in runs}
    assert sorted(name_of.values()) == sorted(["prior", "target", "extract", "backbone"])
    for r in runs:
        waits = {name_of[i.id] for i in r.task_inputs.get("wait_for", [])}
        assert waits == set(stage_module(r.name).INPUTS), r.name
    out = state.result()
    assert {s["status"] for s in out["stages"].values()} == {"ran"}
    assert held == [1, 1, 1]  # target, extract, backbone (not prior), one at a time
    held.clear()
    again = flow(overrides=small, workdir=str(tmp_path), until="backbone")  # no limit: no wait
    keys = {n: s["key"] for n, s in out["stages"].items()}
    assert {n: s["key"] for n, s in again["stages"].items()} == keys  # (source edited meanwhile?)
    assert {s["status"] for s in again["stages"].values()} == {"cached"}
    assert held == []


def test_the_flow_fails_with_the_failing_stage_error(prefect_harness, small, tmp_path):
    from inversescope.errors import StageError

    with pytest.raises(StageError, match="below target.min_accuracy"):
        task_flow("ioi")(overrides=[*small, "target.min_accuracy=1.0"], workdir=str(tmp_path))
    assert (tmp_path / "prior").is_dir()
    assert not (tmp_path / "extract").exists() and not (tmp_path / "backbone").exists()
