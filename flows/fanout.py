"""Fan-out of the sharded stages (extract, sample) on Dask, through prefect-dask.

With ``runner.kind: dask`` the stages run as Prefect tasks on a ``DaskTaskRunner``: every stage
as one task on some worker, and a sharded stage as three steps, each a Prefect task:

    plan (once: create what the shards share, list the shards still to run)
      -> one mapped task per shard (writes a disjoint region or part, then a done-marker)
      -> commit (once: check every marker, write the manifest)

Tasks take and return small dicts and paths, never tensors; every shard loads its models once.
Workers import the project (it must be installed where they run) and report to the Prefect
server named by ``PREFECT_API_URL`` (passed to the workers of a LocalCluster started here; a
cluster given by ``runner.address`` must have it in its workers' environment).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from inversescope.config import RunConfig, RunnerConfig
from inversescope.flows.stage import commit_stage, plan_stage, run_stage_shard


@contextmanager
def temporary_server(startup_timeout: int = 180) -> Iterator[str]:
    """A Prefect server for this process and the processes it starts (Dask workers): started
    here, named in ``PREFECT_API_URL`` while it runs; on exit the log and event workers are
    drained first (else, at interpreter exit, they retry against the stopped server), then it
    stops."""
    # prefect's server, log and event workers deferred: only dask runs without a server need them
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=startup_timeout)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server.api_url
    finally:
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        del os.environ["PREFECT_API_URL"]
        server.stop()


def dask_task_runner(cfg: RunnerConfig):
    """A ``DaskTaskRunner`` on the scheduler at ``cfg.address``, or on a LocalCluster of
    ``cfg.n_workers`` worker processes on loopback."""
    # prefect-dask deferred: only dask runs need it (and distributed is slow to import)
    from prefect.settings import PREFECT_API_URL
    from prefect_dask import DaskTaskRunner

    if cfg.address is not None:
        return DaskTaskRunner(address=cfg.address)
    env = {"OMP_NUM_THREADS": str(cfg.threads_per_worker)}
    api = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if api:
        env["PREFECT_API_URL"] = api
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": cfg.n_workers,
            "threads_per_worker": cfg.threads_per_worker,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
            "env": env,
        }
    )


@task(name="plan", cache_policy=NO_CACHE, task_run_name="{name}: plan")
def plan_task(
    name: str, run: RunConfig, workdir: str, keys: dict[str, str], n_shards: int
) -> dict[str, Any]:
    return plan_stage(name, run, workdir, keys, n_shards)


@task(name="shard", cache_policy=NO_CACHE, task_run_name="{name}: shard {shard[id]}")
def shard_task(
    name: str, run: RunConfig, workdir: str, keys: dict[str, str], gpu: bool, shard: dict[str, Any]
) -> dict[str, Any]:
    # pipeline deferred: it imports this module
    from inversescope.flows.pipeline import gpu_slot, gpu_stages

    with gpu_slot(gpu and name in gpu_stages(run)):
        return run_stage_shard(name, run, workdir, keys, shard)


@task(name="commit", cache_policy=NO_CACHE, task_run_name="{name}: commit")
def commit_task(
    name: str, run: RunConfig, workdir: str, keys: dict[str, str], plan: dict[str, Any]
) -> dict[str, Any]:
    if "cached" in plan:
        return plan["cached"]
    return commit_stage(name, run, workdir, keys, plan["started"]).to_json()


def submit_sharded(
    name: str, run: RunConfig, workdir: str, keys: dict[str, str], gpu: bool, wait_for: list
) -> tuple[PrefectFuture, list[PrefectFuture]]:
    """Submit one sharded stage (plan, shards, commit) on the flow's task runner: (the commit's
    future, which resolves to the stage's result as ``run_stage``'s ``to_json``; the shards'
    futures, so a lost shard's own error can be raised). Blocks until the plan is known; an
    upstream failure is raised as itself. Each shard holds a ``gpu`` slot when ``gpu``."""
    for upstream in wait_for:
        upstream.result()
    plan = plan_task.submit(name, run, workdir, keys, run.runner.shards, wait_for=wait_for)
    planned = plan.result()
    shards = planned.get("shards", [])
    futures = list(
        shard_task.map(
            unmapped(name), unmapped(run), unmapped(workdir), unmapped(keys), unmapped(gpu), shards
        )
    )
    commit = commit_task.submit(name, run, workdir, keys, planned, wait_for=futures)
    return commit, futures
