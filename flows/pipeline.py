"""The Prefect flows: one flow per interpretability task, one ``@task`` per stage.

Prefect's own result caching is off (``NO_CACHE``): stages are cached by our artifact keys,
which hash configs, input keys and the full source closure (Prefect's ``TASK_SOURCE`` would
see only the task function's own source).

Two kinds of flow run the same stages:

- ``pipeline(run, workdir, until)`` takes a whole ``RunConfig``: ``inversescope run`` and
  ``inversescope serve`` (one machine) call it, renamed ``inversescope-<task>``.
- ``ioi_flow``, ``icl_flow``, ``refusal_flow`` (named ``inversescope-<task>`` at definition, so
  a worker that loads one by entry point sees the right name) take a preset picked from a list
  plus single-field overrides: ``inversescope deploy`` puts them on a work pool.

Each stage task waits on the tasks it reads (``wait_for``), so the UI draws the real DAG and
stages that read the same inputs (extract, backbone) run side by side. GPU-bound stages hold a
slot of the global concurrency limit ``gpu`` when the server has one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from pydantic import BaseModel, ConfigDict, Field, create_model

from inversescope.config import ConfigError, RunConfig, check_run, load_run_config
from inversescope.flows.stage import (
    STAGE_ORDER,
    is_sharded,
    run_keys,
    run_stage,
    stage_module,
    stages_until,
)
from inversescope.storage.artifacts import ArtifactStore
from inversescope.tasks import TASKS, preset_names, preset_path

GPU_LIMIT = "gpu"
"""Name of the Prefect global concurrency limit that GPU-bound stages take one slot of."""

GPU_STAGES: tuple[str, ...] = ("target", "extract", "backbone", "controls", "sample")
"""Stages that load a model onto the run's device (``label`` too when a labeller is set)."""

STAGES_ARTIFACT = "inversescope-stages"


def gpu_stages(run: RunConfig) -> frozenset[str]:
    """Stages of ``run`` that hold a ``gpu`` slot: none when the run is pinned to the CPU."""
    if run.device.startswith("cpu"):
        return frozenset()
    return frozenset(GPU_STAGES + (("label",) if run.labeller is not None else ()))


def gpu_limit_exists() -> bool:
    """Whether the server has the global concurrency limit ``gpu``. One API call per flow run:
    without the limit (the temporary local server) stages take no slot and log no warning."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
    except ObjectNotFound:
        return False
    return True


@contextmanager
def gpu_slot(use: bool) -> Iterator[None]:
    if not use:
        yield
        return
    from prefect.concurrency.sync import concurrency

    # A global limit with a lease: a crashed holder's slot returns when its lease lapses
    # (tag limits leak slots on cancellation: PrefectHQ/prefect #16761, #8566).
    with concurrency(GPU_LIMIT, occupy=1, strict=False):
        yield


def _make_stage_task(name: str):
    def run(
        run: RunConfig, workdir: str, keys: dict[str, str], gpu: bool = False
    ) -> dict[str, Any]:
        logger = get_run_logger()
        cached = ArtifactStore(workdir).lookup(name, keys[name]) is not None
        hold = gpu and not cached and name in gpu_stages(run)
        with gpu_slot(hold):
            result = run_stage(name, run, workdir, keys)
        logger.info("%s %s: %s (%.1f s)", name, result.status, result.path, result.seconds)
        return result.to_json()

    run.__name__ = f"stage_{name}"
    return task(run, name=name, cache_policy=NO_CACHE, task_run_name=name)


STAGE_TASKS = {name: _make_stage_task(name) for name in STAGE_ORDER}


def _run_stages(run: RunConfig, workdir: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Run the stages here, or (``runner.kind: dask``) in a subflow on a Dask task runner."""
    if run.runner.kind == "dask":
        from inversescope.flows.fanout import dask_task_runner  # distributed: only for dask

        runner = dask_task_runner(run.runner)
        return _stages_on_dask.with_options(task_runner=runner)(run, workdir, names)
    return _submit_stages(run, workdir, names)


def _submit_stages(run: RunConfig, workdir: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Submit every stage with ``wait_for`` on the stages it reads; raise the first failure.
    On Dask, extract and sample fan out in shards (``flows.fanout``)."""
    keys = run_keys(run, names)
    gpu = bool(gpu_stages(run)) and gpu_limit_exists()
    futures, shard_futures = {}, []
    for name in names:
        upstream = [futures[i] for i in stage_module(name).INPUTS if i in futures]
        if run.runner.kind == "dask" and is_sharded(name):
            from inversescope.flows.fanout import submit_sharded  # deferred as the runner

            futures[name], shards = submit_sharded(name, run, workdir, keys, gpu, upstream)
            shard_futures.extend(shards)
            continue
        futures[name] = STAGE_TASKS[name].submit(run, workdir, keys, gpu, wait_for=upstream)
    for done in as_completed([*futures.values(), *shard_futures]):
        done.result()  # the failing stage finishes before its dependents: its error comes first
    results = {name: fut.result() for name, fut in futures.items()}
    _report(results, workdir)
    return {"stages": results}


def _report(results: dict[str, Any], workdir: str) -> None:
    """A table artifact of the stages (status, key, path, seconds) on the flow run's page;
    once the fcr stage is there, its description names the command that browses the run."""
    from prefect.artifacts import create_table_artifact

    rows = [{"stage": n, **r} for n, r in results.items()]
    statuses = {r["status"] for r in results.values()}
    summary = "stages: " + ", ".join(f"{n} {r['status']}" for n, r in results.items())
    get_run_logger().info("%s%s", summary, " (all cached)" if statuses == {"cached"} else "")
    description = summary
    if "fcr" in results:
        description += f". Browse the results: `inversescope view {workdir}`"
    create_table_artifact(rows, key=STAGES_ARTIFACT, description=description)


@flow(name="inversescope-stages-dask", log_prints=False)
def _stages_on_dask(run: RunConfig, workdir: str, names: tuple[str, ...]) -> dict[str, Any]:
    """The stages as tasks of a Dask task runner (set with ``with_options`` per run)."""
    return _submit_stages(run, workdir, names)


@flow(name="inversescope", log_prints=False)
def pipeline(run: RunConfig, workdir: str = "runs", until: str | None = None) -> dict[str, Any]:
    """Run the stages of one task, each cached by its artifact key."""
    run = RunConfig.model_validate(run)  # a dict when scheduled from the UI or the API
    names = stages_until(until)
    check_run(run)
    return _run_stages(run, workdir, names)


def flow_for(task_name: str):
    """The whole-config pipeline flow named after its task, as it appears in the Prefect UI."""
    return pipeline.with_options(name=f"inversescope-{task_name}")


def deployment(run: RunConfig, workdir: str, name: str | None = None):
    """A deployment of the task's flow with this run config as its default parameters, to serve
    (``inversescope serve``) and schedule from the Prefect UI, where the config is a form."""
    return flow_for(run.task).to_deployment(
        name=name or run.preset or run.task,
        parameters={"run": run.model_dump(mode="json"), "workdir": workdir},
        description=f"InverseScope pipeline, task {run.task}, preset {run.preset}",
    )


# --- flows for work pools: a preset from a list, then single fields --------------------------


@cache
def presets_of(task_name: str) -> tuple[str, ...]:
    """The shipped presets of one task (read from their YAML ``task:`` line)."""
    out = []
    for name in preset_names():
        data = yaml.safe_load(preset_path(name).read_text(encoding="utf-8")) or {}
        if data.get("task") == task_name:
            out.append(name)
    return tuple(out)


def default_preset(task_name: str) -> str:
    names = presets_of(task_name)
    return f"{task_name}-tiny" if f"{task_name}-tiny" in names else names[0]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model of ``Model`` or ``Model | None``, else ``None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, type(int | None)):
        models = [a for a in get_args(annotation) if a is not type(None)]
        if len(models) == 1:
            return _model_in(models[0])
    return None


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, type(int | None)):
        rest = tuple(a for a in get_args(annotation) if a is not type(None))
        return rest[0] if len(rest) == 1 else Union[rest]  # noqa: UP007
    return annotation


@cache
def partial_model(model: type[BaseModel], skip: tuple[str, ...] = ()) -> type[BaseModel]:
    """``model`` with every field optional (unset = keep the preset's value), the same
    descriptions, and ``position`` in field order (the UI sorts a form's fields by it; a server
    on PostgreSQL stores schemas as JSONB, which does not keep key order). Values are checked
    only when the run starts, by the same code as the CLI's ``--set``."""
    fields: dict[str, Any] = {}
    for i, (fname, info) in enumerate(
        (n, f) for n, f in model.model_fields.items() if n not in skip
    ):
        extra = {"position": i}
        sub = _model_in(info.annotation)
        if sub is not None:
            fields[fname] = (
                partial_model(sub),
                Field(default_factory=partial_model(sub), description=info.description,
                      json_schema_extra=extra),
            )  # fmt: skip
        else:  # the bare type (no ``| None``): the UI shows a plain input, empty = unset
            fields[fname] = (
                _without_none(info.annotation),
                Field(None, description=info.description, json_schema_extra=extra),
            )
    return create_model(  # type: ignore[call-overload]
        model.__name__,
        __config__=ConfigDict(extra="forbid"),
        __doc__=model.__doc__,
        **fields,
    )


def _prune(value: Any) -> Any:
    """Drop ``None`` leaves, empty lists and empty sections of a partial config: what a form
    left empty keeps the preset's value (``overrides`` can still set ``[]`` or ``null``)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        v = _prune(v)
        if v is None or v == {} or v == []:
            continue
        out[k] = v
    return out


def assignments(config: Any, prefix: str = "") -> list[str]:
    """A partial config as ``section.field=value`` lines (values as JSON, which YAML reads)."""
    out: list[str] = []
    for k, v in (_prune(config) or {}).items():
        if isinstance(v, dict):
            out.extend(assignments(v, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}={json.dumps(v)}")
    return out


def run_config_of(
    task_name: str, preset: str, config: Any = None, overrides: list[str] | None = None
) -> RunConfig:
    """The run config of a deployment's parameters, through the CLI's own path (``--set``), so
    a bad value fails with the same one-line ``ConfigError``."""
    if preset not in presets_of(task_name):
        raise ConfigError(
            f"preset {preset!r} is not a preset of task {task_name}; "
            f"accepted: {', '.join(presets_of(task_name))}"
        )
    if not isinstance(config, dict | BaseModel | None):
        raise ConfigError(f"config {config!r}: expected a mapping of config sections")
    if isinstance(config, dict) and ("task" in config or "preset" in config):
        raise ConfigError("config: set the preset with the preset parameter, not in config")
    if not isinstance(overrides, list | tuple | None):
        raise ConfigError(f"overrides {overrides!r}: expected a list of section.field=value")
    run = load_run_config(preset, [*assignments(config), *(overrides or [])])
    check_run(run)
    return run


def partial_config_of(run: RunConfig) -> tuple[str, dict[str, Any], list[str]]:
    """(preset, partial config, overrides) that rebuild ``run`` through ``run_config_of``: the
    fields that differ from the preset's, in ``config``, except those set to null or ``[]``
    (which a form leaves empty), in ``overrides``."""
    preset = run.preset if run.preset in presets_of(run.task) else default_preset(run.task)
    base = load_run_config(preset).model_dump(mode="json")
    mine = run.model_dump(mode="json")
    emptied: list[str] = []

    def diff(a: Any, b: Any, path: str) -> dict[str, Any]:
        out = {}
        for k, v in b.items():
            old = a.get(k) if isinstance(a, dict) else None
            if old == v or k in ("preset", "task"):
                continue
            if isinstance(v, dict) and isinstance(old, dict):
                sub = diff(old, v, f"{path}{k}.")
                if sub:
                    out[k] = sub
            elif v is None or v == []:
                emptied.append(f"{path}{k}={json.dumps(v)}")
            else:
                out[k] = v
        return out

    partial = diff(base, mine, "")
    rebuilt = run_config_of(run.task, preset, partial, emptied)
    assert rebuilt.model_dump(exclude={"preset"}) == run.model_dump(exclude={"preset"})
    return preset, partial, emptied


StageName = Literal[STAGE_ORDER]  # type: ignore[valid-type]


def _task_flow(task_name: str):
    preset_type = Literal[presets_of(task_name)]  # type: ignore[valid-type]
    config_type = partial_model(RunConfig, ("preset", "task"))

    def fn(
        preset: str = default_preset(task_name),
        config: Any = None,
        overrides: list[str] | None = None,
        workdir: str = "runs",
        until: str | None = None,
    ) -> dict[str, Any]:
        run = run_config_of(task_name, preset, config, overrides)
        names = stages_until(until)
        get_run_logger().info("preset %s, task %s, workdir %s", preset, run.task, workdir)
        out = _run_stages(run, workdir, names)
        return {**out, "preset": run.preset, "task": run.task, "workdir": workdir}

    fn.__name__ = fn.__qualname__ = f"{task_name}_flow"
    fn.__module__ = __name__
    fn.__annotations__ = {
        "preset": preset_type,
        "config": config_type,
        "overrides": list[str] | None,
        "workdir": str,
        "until": StageName | None,
        "return": dict[str, Any],
    }
    fn.__doc__ = f"""Run the InverseScope pipeline of task {task_name}: a preset, then changes.

    Args:
        preset: The preset the run starts from (`inversescope presets` lists them).
        config: Fields to change from the preset; empty fields keep the preset's value.
        overrides: More changes, one `section.field=value` a line, as the CLI's --set
            (e.g. `kernel.epsilon=0.2`, `extract.sites=[L0H1, L1.attn]`); applied last.
        workdir: Artifact directory, shared by every worker (an absolute path).
        until: Last stage to run (empty: every stage).
    """
    # validate_parameters=False: values reach run_config_of as sent, so a bad one fails with
    # the CLI's one-line message instead of Prefect's parameter-validation report.
    return flow(fn, name=f"inversescope-{task_name}", validate_parameters=False)


ioi_flow = _task_flow("ioi")
icl_flow = _task_flow("icl")
refusal_flow = _task_flow("refusal")

TASK_FLOWS = {"ioi": ioi_flow, "icl": icl_flow, "refusal": refusal_flow}
assert set(TASK_FLOWS) == set(TASKS), "one module-level flow per task"


def task_flow(task_name: str):
    """The work-pool flow of a task (module-level, so a worker's entry point finds it)."""
    if task_name not in TASK_FLOWS:
        raise ConfigError(f"unknown task {task_name!r}; accepted: {', '.join(TASK_FLOWS)}")
    return TASK_FLOWS[task_name]
