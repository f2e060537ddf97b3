"""The cluster path for real: PostgreSQL 15, a Prefect server on it, a process work pool with a
worker, ``inversescope deploy``, and flow runs created through the REST API as the UI does."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from inversescope.config import ConfigError, load_run_config
from inversescope.flows.pipeline import STAGES_ARTIFACT
from inversescope.flows.stage import STAGE_ORDER

pytestmark = pytest.mark.service

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _create_run_as_the_ui(api: str, deployment: dict, **changed) -> str:
    """POST /deployments/{id}/create_flow_run with the form's values, as the UI's Run page
    sends them: every parameter of the deployment, some of them changed."""
    body = {
        "parameters": {**deployment["parameters"], **changed},
        "state": {"type": "SCHEDULED", "message": "Run from the Prefect UI"},
        "tags": [],
    }
    r = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run", json=body, timeout=30)
    r.raise_for_status()
    return r.json()["id"]


def _wait(api: str, run_id: str, timeout: float, worker_log: Path) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()
        if run["state"]["type"] in TERMINAL:
            return run
        time.sleep(1)
    raise TimeoutError(f"flow run {run_id} not finished:\n{worker_log.read_text()[-4000:]}")


def _logs(api: str, run_id: str, wait_for: str = "", timeout: float = 20) -> str:
    """The run's log messages; with ``wait_for``, until one holds it (logs ship in batches,
    after the run's final state)."""
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    deadline = time.monotonic() + timeout
    while True:
        logs = httpx.post(f"{api}/logs/filter", json=body, timeout=30).json()
        text = "\n".join(x["message"] for x in logs)
        if wait_for in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def _stages(api: str, run_id: str) -> list[dict]:
    body = {"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": [STAGES_ARTIFACT]}}}
    arts = httpx.post(f"{api}/artifacts/filter", json=body, timeout=30).json()
    assert len(arts) == 1, arts
    assert "inversescope view " in arts[0]["description"]  # where the results are browsed
    data = arts[0]["data"]
    return json.loads(data) if isinstance(data, str) else data


def test_deploy_then_runs_from_the_ui(cluster, small):
    t0 = time.monotonic()
    sets = [a for o in small for a in ("--set", o)]
    dep = subprocess.run(
        ["inversescope", "deploy", "ioi-tiny", "--pool", cluster.pool, "--name", "svc",
         "--workdir", str(cluster.workdir), "--gpu-slots", "1", *sets],
        env=cluster.env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert dep.returncode == 0, dep.stderr
    api = cluster.api
    deployment = httpx.get(f"{api}/deployments/name/inversescope-ioi/svc", timeout=30).json()
    assert deployment["entrypoint"] == "inversescope.flows.pipeline.ioi_flow"
    assert deployment["parameters"]["preset"] == "ioi-tiny"
    assert deployment["parameters"]["workdir"] == str(cluster.workdir)
    schema = deployment["parameter_openapi_schema"]
    assert "ioi-tiny" in schema["properties"]["preset"]["enum"]
    limit = httpx.get(f"{api}/v2/concurrency_limits/gpu", timeout=30).json()
    assert limit["limit"] == 1

    # 1. a run with one parameter changed in the form builds every stage
    config = {**deployment["parameters"]["config"], "fcr": {"n_bootstrap": 50}}
    first = _create_run_as_the_ui(api, deployment, config=config)
    run = _wait(api, first, 900, cluster.logs)
    assert run["state"]["type"] == "COMPLETED", _logs(api, first)
    flow = httpx.get(f"{api}/flows/{run['flow_id']}", timeout=30).json()
    assert flow["name"] == "inversescope-ioi"
    stages = _stages(api, first)
    assert [s["stage"] for s in stages] == list(STAGE_ORDER)
    assert {s["status"] for s in stages} == {"ran"}
    for s in stages:
        assert Path(s["path"]).parent.parent == cluster.workdir
        assert (Path(s["path"]) / "manifest.json").is_file()
    fcr = Path(next(s["path"] for s in stages if s["stage"] == "fcr"))
    assert (fcr / "results.parquet").is_file()
    manifest = json.loads((fcr / "manifest.json").read_text())
    assert manifest["run"]["fcr"]["n_bootstrap"] == 50  # the changed field reached the run
    task_runs = httpx.post(
        f"{api}/task_runs/filter",
        json={"task_runs": {"flow_run_id": {"any_": [first]}}},
        timeout=30,
    ).json()
    name_of = {t["id"]: t["name"] for t in task_runs}
    backbone = next(t for t in task_runs if t["name"] == "backbone")
    waits = {name_of[i["id"]] for i in backbone["task_inputs"].get("wait_for", [])}
    assert waits == {"prior", "target"}  # the DAG's edges, as the UI draws them

    # 2. the same again: every stage cached
    second = _create_run_as_the_ui(api, deployment, config=config)
    run = _wait(api, second, 300, cluster.logs)
    assert run["state"]["type"] == "COMPLETED", _logs(api, second)
    again = _stages(api, second)
    assert [s["key"] for s in again] == [s["key"] for s in stages]  # (source edited meanwhile?)
    assert {s["status"] for s in again} == {"cached"}
    assert "(all cached)" in _logs(api, second, wait_for="(all cached)")

    # 3. an invalid value fails the run at once with the CLI's one-line message
    with pytest.raises(ConfigError) as cli_error:
        load_run_config("ioi-tiny", [*small, "kernel.epsilon=-1"])
    bad_config = {**config, "kernel": {"epsilon": -1}}  # the server takes it: the flow checks
    bad = _create_run_as_the_ui(api, deployment, config=bad_config)
    run = _wait(api, bad, 300, cluster.logs)
    assert run["state"]["type"] == "FAILED"
    message = str(cli_error.value)
    assert "\n" not in message
    assert message in run["state"]["message"]
    assert message in _logs(api, bad, wait_for=message)
    assert not list(cluster.workdir.glob("*/.partial-*"))
    print(f"service test: {time.monotonic() - t0:.0f} s after the cluster was up")
