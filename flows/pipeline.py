"""The Prefect flow: one flow per interpretability task, one ``@task`` per stage.

Prefect's own result caching is off (``NO_CACHE``): stages are cached by our artifact keys,
which hash configs, input keys and the full source closure (Prefect's ``TASK_SOURCE`` would
see only the task function's own source).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from inversescope.flows.config import RunConfig, check_run
from inversescope.flows.stage import STAGE_ORDER, run_keys, run_stage


def _make_stage_task(name: str):
    def run(run: RunConfig, workdir: str, keys: dict[str, str]) -> dict[str, Any]:
        logger = get_run_logger()
        result = run_stage(name, run, workdir, keys)
        logger.info("%s %s: %s (%.1f s)", name, result.status, result.path, result.seconds)
        return result.to_json()

    run.__name__ = f"stage_{name}"
    return task(run, name=name, cache_policy=NO_CACHE, task_run_name=name)


STAGE_TASKS = {name: _make_stage_task(name) for name in STAGE_ORDER}


def stages_until(until: str | None) -> tuple[str, ...]:
    if until is None:
        return STAGE_ORDER
    if until not in STAGE_ORDER:
        raise ValueError(f"unknown stage {until!r}; accepted: {', '.join(STAGE_ORDER)}")
    return STAGE_ORDER[: STAGE_ORDER.index(until) + 1]


@flow(name="inversescope", log_prints=False)
def pipeline(run: RunConfig, workdir: str = "runs", until: str | None = None) -> dict[str, Any]:
    """Run the stages of one task in order, each cached by its artifact key."""
    run = RunConfig.model_validate(run)  # a dict when scheduled from the UI or the API
    names = stages_until(until)
    check_run(run)
    keys = run_keys(run, names)
    results: dict[str, Any] = {}
    for name in names:
        results[name] = STAGE_TASKS[name](run, workdir, keys)
    return {"stages": results}


def flow_for(task_name: str):
    """The pipeline flow named after its task, as it appears in the Prefect UI."""
    return pipeline.with_options(name=f"inversescope-{task_name}")


def deployment(run: RunConfig, workdir: str, name: str | None = None):
    """A deployment of the task's flow with this run config as its default parameters, to serve
    (``inversescope serve``) and schedule from the Prefect UI, where the config is a form."""
    return flow_for(run.task).to_deployment(
        name=name or run.preset or run.task,
        parameters={"run": run.model_dump(mode="json"), "workdir": workdir},
        description=f"InverseScope pipeline, task {run.task}, preset {run.preset}",
    )
