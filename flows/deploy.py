"""``inversescope deploy``: put a task's flow on a Prefect work pool.

The deployment points at the flow by module path (``inversescope.flows.pipeline.ioi_flow``), so
any worker with the package installed (a process worker on a GPU node, or the worker image of
``docker/``) loads it; there is no code to pull. Its default parameters are the given preset
plus the fields the YAML or ``--set`` change, so a run from the UI starts from them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from uuid import UUID

from inversescope.config import ConfigError, RunConfig

log = logging.getLogger(__name__)

DEFAULT_GPU_SLOTS = 1


@dataclass(frozen=True)
class Deployed:
    id: UUID
    name: str  # flow/deployment, as `prefect deployment run` takes it
    pool: str
    gpu_limit: int  # slots of the `gpu` limit on the server


def _require_server() -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError(
            "PREFECT_API_URL is not set; point it at the Prefect server to deploy to "
            "(e.g. http://127.0.0.1:4200/api)"
        )
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise ConfigError(f"PREFECT_API_URL={url}: the Prefect server does not answer ({error})")


def ensure_gpu_limit(slots: int | None) -> int:
    """Create the global concurrency limit ``gpu`` with ``slots`` (default 1) if absent; with
    ``slots`` given, resize an existing one. Returns its size."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    from inversescope.flows.pipeline import GPU_LIMIT

    if slots is not None and slots < 1:
        raise ConfigError(f"--gpu-slots={slots}: expected at least 1")
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            size = slots or DEFAULT_GPU_SLOTS
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=size)
            )
            log.info("created global concurrency limit %r with %d slot(s)", GPU_LIMIT, size)
            return size
        if slots is not None and slots != limit.limit:
            client.update_global_concurrency_limit(
                GPU_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots)
            )
            return slots
        return limit.limit


def deploy(
    run: RunConfig,
    pool: str,
    workdir: str,
    name: str | None = None,
    image: str | None = None,
    gpu_slots: int | None = None,
) -> Deployed:
    """Register (or update) the deployment of ``run``'s task flow on work pool ``pool``."""
    from prefect import deploy as prefect_deploy
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.types.entrypoint import EntrypointType

    from inversescope.flows.pipeline import partial_config_of, task_flow

    _require_server()
    preset, partial, emptied = partial_config_of(run)
    with get_client(sync_client=True) as client:
        try:
            work_pool = client.read_work_pool(pool)
        except ObjectNotFound as e:
            raise ConfigError(
                f"work pool {pool!r} does not exist; create it first, e.g. "
                f"`prefect work-pool create {pool} --type process`"
            ) from e
    if image and work_pool.type == "process":
        raise ConfigError(
            f"--image {image!r}: work pool {pool!r} is a process pool, it runs no image"
        )
    gpu_limit = ensure_gpu_limit(gpu_slots)
    flow = task_flow(run.task)
    dep_name = name or run.preset or run.task
    dep = flow.to_deployment(
        name=dep_name,
        parameters={"preset": preset, "config": partial, "overrides": emptied, "workdir": workdir},
        description=(
            f"InverseScope pipeline, task {run.task}, from preset {preset}; artifacts in "
            f"{workdir}. Pick a preset, change single fields under config or overrides."
        ),
        tags=["inversescope", run.task],
        entrypoint_type=EntrypointType.MODULE_PATH,
        # the flow checks every value itself, so a bad one fails the run with the CLI's
        # one-line message (the server's schema check would refuse it with its own)
        enforce_parameter_schema=False,
    )
    ids = prefect_deploy(
        dep,
        work_pool_name=pool,
        image=image,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )
    return Deployed(ids[0], f"{flow.name}/{dep_name}", pool, gpu_limit)
