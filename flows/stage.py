"""Running one stage with our own cache: key, lookup, lock, build in a partial directory,
commit atomically.

Every stage module follows the ``Stage`` protocol below. The key of a stage = hash(its
``config_of(run)``, its inputs' keys, and the source of the code its build runs:
``stage_code``).
A stage's ``build`` gets a ``StageContext`` (the run, its input artifacts, the partial directory
to write, its key and the workdir) and reads and writes files only through
``inversescope.storage.layout``.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import logging
import os
import random
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, cast

from inversescope.core.faults import fault_point
from inversescope.core.threads import TORCH_STATE, in_own_thread
from inversescope.storage.artifacts import Artifact, ArtifactStore, Timer
from inversescope.storage.files import Where
from inversescope.storage.keys import code_hash, stage_key

if TYPE_CHECKING:
    from inversescope.config import RunConfig

log = logging.getLogger(__name__)

STAGE_ORDER: tuple[str, ...] = (
    "prior",
    "target",
    "extract",
    "backbone",
    "controls",
    "sample",
    "label",
    "fcr",
    "hypotheses",
)


def stages_until(until: str | None) -> tuple[str, ...]:
    """The stages a run with ``--until`` (the last stage to run) runs, in order."""
    if until is None:
        return STAGE_ORDER
    if until not in STAGE_ORDER:
        from inversescope.config import ConfigError  # the user's to fix: one line

        raise ConfigError(f"unknown stage {until!r}; accepted: {', '.join(STAGE_ORDER)}")
    return STAGE_ORDER[: STAGE_ORDER.index(until) + 1]


def cached_results(
    workdir: Where | str, keys: dict[str, str], names: tuple[str, ...]
) -> dict[str, StageResult] | None:
    """Every stage of ``names`` as committed already, or None when any has yet to be built."""
    store = ArtifactStore(workdir)
    out = {}
    for name in names:
        hit = store.lookup(name, keys[name])
        if hit is None:
            return None
        out[name] = StageResult(name, "cached", keys[name], str(hit.path), 0.0)
    return out


@cache
def stage_module(name: str) -> Stage:
    if name not in STAGE_ORDER:
        raise ValueError(f"unknown stage {name!r}; accepted: {', '.join(STAGE_ORDER)}")
    return cast(Stage, importlib.import_module(f"inversescope.flows.stage_{name}"))


@dataclass(frozen=True)
class StageContext:
    """What a stage's ``build`` is handed."""

    run: RunConfig
    inputs: dict[str, Artifact]  # upstream stage name -> its committed artifact
    out: Where  # the partial directory (or bucket build) to write; committed by the manifest
    key: str  # this artifact's cache key
    workdir: Where  # a local directory or a bucket prefix (storage.files)


class Stage(Protocol):
    """The contract of a stage module (``inversescope.flows.stage_<NAME>``)."""

    NAME: str
    INPUTS: tuple[str, ...]  # upstream stages whose artifacts ``build`` reads
    RESUMABLE: bool  # keep the partial directory of a killed run and resume from it
    # optional SEEDED = True: the build draws from the global random generators (see seeded)
    # optional CODE: modules the build runs that no import of the stage module names

    def config_of(self, run: RunConfig) -> dict[str, Any]:
        """What of the run config the artifact depends on (JSON-able, no I/O beyond
        fingerprints of files the run names)."""
        ...

    def build(self, ctx: StageContext) -> dict[str, Any]:
        """Write the artifact into ``ctx.out``; return the manifest's metrics."""
        ...


class ShardedStage(Stage, Protocol):
    """A stage that can also fan out (extract, sample): ``build`` runs every shard in one
    process; fanned out, ``plan`` (once) creates what the shards share and returns the shards
    still to run, ``run_shard`` (anywhere) writes one shard's disjoint output then its
    done-marker, and ``finish`` (once) checks every marker and returns the metrics."""

    def plan(self, ctx: StageContext, n_shards: int | None) -> list[dict[str, Any]]: ...

    def run_shard(self, ctx: StageContext, shard: dict[str, Any]) -> dict[str, Any]: ...

    def finish(self, ctx: StageContext) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StageResult:
    name: str
    status: str  # "ran" | "cached"
    key: str
    path: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("name")
        return d


def seed_everything(seed: int) -> None:
    # numpy and torch deferred: computing keys must not import torch
    import numpy as np
    import torch

    # cuBLAS is deterministic only with a fixed workspace, set before its first use
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def seeded(mod: Stage, seed: int) -> Iterator[list[str]]:
    """For a stage that draws from the global random generators (``SEEDED``: it initialises
    or trains a model): seed them, switch torch to its deterministic algorithms, and hold both
    for the whole build (``core.threads.TORCH_STATE``). Stages run side by side in threads of
    one process (extract beside backbone): a reseed, or a model load (transformers swaps
    torch.nn.init for no-ops while it loads), in the middle of another stage's initialisation
    would change its weights. Yields a list that fills with the operations torch could not make
    deterministic (none on CPU; the manifest records them). Other stages use their own
    generators and wait only while they load a model."""
    if not getattr(mod, "SEEDED", False):
        yield []
        return
    import torch  # deferred: computing keys must not import torch

    nondeterministic: list[str] = []
    with TORCH_STATE:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            seed_everything(seed)
            previous = torch.are_deterministic_algorithms_enabled()
            # e.g. the backward of indexing the site encoders by repeated site indices
            # accumulates in parallel on CPU, in whatever order threads finish, unless this is on
            torch.use_deterministic_algorithms(True, warn_only=True)
            # deterministic mode also fills every new tensor with NaN by default, a check for
            # kernels that read memory before writing it: ~1,600 fills a controls step, none of
            # which any value depends on (trained weights equal bit for bit without them)
            previous_fill = torch.utils.deterministic.fill_uninitialized_memory
            torch.utils.deterministic.fill_uninitialized_memory = False
            try:
                yield nondeterministic
            finally:
                torch.use_deterministic_algorithms(previous)
                torch.utils.deterministic.fill_uninitialized_memory = previous_fill
        for w in caught:  # the other warnings go on to the usual handlers
            if "does not have a deterministic implementation" in str(w.message):
                nondeterministic.append(str(w.message).splitlines()[0])
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def stage_code(name: str, run: RunConfig) -> tuple[str, ...]:
    """The modules whose code the stage's build runs, as its key hashes them (with everything
    they import, see ``storage.keys``): the stage module, its ``CODE`` (modules that lower
    modules import only inside the functions it calls) and its ``extra_code(run)`` (the
    task's own module, for the prior)."""
    mod = stage_module(name)
    extra = getattr(mod, "extra_code", None)
    modules = extra(run)[0] if extra else ()
    return (cast(ModuleType, mod).__name__, *getattr(mod, "CODE", ()), *modules)


def stage_files(name: str, run: RunConfig) -> tuple[Path, ...]:
    extra = getattr(stage_module(name), "extra_code", None)
    return tuple(extra(run)[1]) if extra else ()


def run_keys(
    run: RunConfig, names: tuple[str, ...] = STAGE_ORDER, fixed: dict[str, str] | None = None
) -> dict[str, str]:
    """Keys of ``names`` and of everything they read, each computed once. A key hashes the
    stage's config, its inputs' keys and its source closure. A flow takes this snapshot at its
    start, so source edited while it runs cannot split one run across two keys. ``fixed``
    gives some stages' keys outright (artifacts built by another checkout, reused by a
    benchmark); the stages that read them derive their keys from those."""
    keys: dict[str, str] = dict(fixed or {})

    def key(name: str) -> str:
        if name not in keys:
            mod = stage_module(name)
            code = code_hash(stage_code(name, run), stage_files(name, run))
            inputs = {inp: key(inp) for inp in mod.INPUTS}
            keys[name] = stage_key(name, mod.config_of(run), inputs, code)
        return keys[name]

    for name in names:
        key(name)
    return keys


def _inputs(store: ArtifactStore, mod: Stage, keys: dict[str, str]) -> dict[str, Artifact]:
    return {inp: store.require(inp, keys[inp]) for inp in mod.INPUTS}


def _commit(
    store: ArtifactStore, name: str, run: RunConfig, key: str, inputs, metrics, seconds: float
) -> Artifact:
    return store.commit(
        name,
        key,
        {
            "config": stage_module(name).config_of(run),
            "inputs": {k: v.key for k, v in inputs.items()},
            "run": run.model_dump(mode="json"),
            "seconds": seconds,
            "metrics": metrics,
        },
    )


def run_stage(
    name: str, run: RunConfig, workdir: Where | str, keys: dict[str, str] | None = None
) -> StageResult:
    """Return the cached artifact of ``name`` or build and commit it. ``keys`` (from
    ``run_keys``) fixes the keys of this stage and its inputs; without it they are computed now."""
    store = ArtifactStore(workdir)
    mod = stage_module(name)
    keys = keys if keys is not None else run_keys(run, (name,))
    key = keys[name]
    timer = Timer()
    hit = store.lookup(name, key)
    if hit is not None:
        log.info("%s: cached %s", name, hit.path)
        return StageResult(name, "cached", key, str(hit.path), round(timer.seconds, 3))
    inputs = _inputs(store, mod, keys)
    with store.lock(name, key):
        hit = store.lookup(name, key)  # another process may have built it while we waited
        if hit is not None:
            return StageResult(name, "cached", key, str(hit.path), round(timer.seconds, 3))
        partial = store.begin(name, key, resumable=mod.RESUMABLE)
        log.info("%s: building %s", name, store.path(name, key))
        fault_point(name, "start")
        ctx = StageContext(run, inputs, partial, key, store.workdir)
        metrics = in_own_thread(lambda: _build(mod, ctx))
        fault_point(name, "built")
        seconds = round(timer.seconds, 3)
        art = _commit(store, name, run, key, inputs, metrics, seconds)
    release_memory()
    log.info("%s: done in %.1f s -> %s", name, seconds, art.path)
    return StageResult(name, "ran", key, str(art.path), seconds)


def _build(mod: Stage, ctx: StageContext) -> dict[str, Any]:
    """``mod.build`` seeded (``seeded``); a seeded stage's metrics name the operations torch
    could not make deterministic."""
    with seeded(mod, ctx.run.seed) as nondeterministic:
        metrics = mod.build(ctx)
    if getattr(mod, "SEEDED", False):
        metrics = {**metrics, "nondeterministic_ops": nondeterministic}
    return metrics


def release_memory() -> None:
    """Hand back to the system what a finished build freed. A local run builds each stage in a
    worker thread of its own (Prefect's thread pool), and glibc gives each thread an arena that
    keeps its freed pages; without this the run's resident set was about the sum of its stages'
    peaks, not their maximum (benchmarks/README.md). Elsewhere than glibc it only collects."""
    gc.collect()
    with suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(None).malloc_trim(0)


# --- fan-out: plan, shards (anywhere), commit --------------------------------------------
def is_sharded(name: str) -> bool:
    """Whether stage ``name`` can fan out (``plan``, ``run_shard`` and ``finish``)."""
    return hasattr(stage_module(name), "plan")


def plan_stage(
    name: str, run: RunConfig, workdir: Where | str, keys: dict[str, str], n_shards: int
) -> dict[str, Any]:
    """Fan-out step 1: ``{"cached": StageResult json}`` when the artifact exists, else prepare
    the partial directory (a sharded stage is resumable) and return ``{"shards": [...]}``, the
    shards still to run (small dicts, never tensors)."""
    store, key = ArtifactStore(workdir), keys[name]
    mod = cast(ShardedStage, stage_module(name))
    hit = store.lookup(name, key)
    if hit is not None:
        return {"cached": StageResult(name, "cached", key, str(hit.path), 0.0).to_json()}
    inputs = _inputs(store, mod, keys)
    with store.lock(name, key):
        hit = store.lookup(name, key)
        if hit is not None:
            return {"cached": StageResult(name, "cached", key, str(hit.path), 0.0).to_json()}
        partial = store.begin(name, key, resumable=True)
        shards = mod.plan(StageContext(run, inputs, partial, key, store.workdir), n_shards)
    log.info("%s: %d shards to run in %s", name, len(shards), partial)
    return {"shards": shards, "started": time.time()}


def run_stage_shard(
    name: str, run: RunConfig, workdir: Where | str, keys: dict[str, str], shard: dict[str, Any]
) -> dict[str, Any]:
    """Fan-out step 2, in any process or host that sees the workdir: one shard, under a lock of
    its own (two runs never write one shard at once; the second finds it done)."""
    store, key = ArtifactStore(workdir), keys[name]
    mod = cast(ShardedStage, stage_module(name))
    if store.lookup(name, key) is not None:
        # committed already: Dask recomputes a finished task whose result lived on a lost
        # worker, and another run may have finished the stage; nothing is left to write
        return {"id": shard["id"], "skipped": "committed"}
    inputs = _inputs(store, mod, keys)
    with store.lock(name, f"{key}-{shard['id']}"):
        if store.lookup(name, key) is not None:
            return {"id": shard["id"], "skipped": "committed"}
        fault_point(name, shard["id"])
        ctx = StageContext(run, inputs, store.partial_path(name, key), key, store.workdir)

        def shard_build() -> dict[str, Any]:
            with seeded(mod, run.seed):
                return mod.run_shard(ctx, shard)

        return in_own_thread(shard_build)


def commit_stage(
    name: str, run: RunConfig, workdir: Where | str, keys: dict[str, str], started: float
) -> StageResult:
    """Fan-out step 3: check every shard's marker and commit the manifest (or find the artifact
    another run committed meanwhile)."""
    store, key = ArtifactStore(workdir), keys[name]
    mod = cast(ShardedStage, stage_module(name))
    inputs = _inputs(store, mod, keys)
    with store.lock(name, key):
        hit = store.lookup(name, key)
        if hit is not None:
            return StageResult(name, "cached", key, str(hit.path), 0.0)
        partial = store.partial_path(name, key)
        metrics = mod.finish(StageContext(run, inputs, partial, key, store.workdir))
        fault_point(name, "built")
        seconds = round(time.time() - started, 3)
        art = _commit(store, name, run, key, inputs, metrics, seconds)
    log.info("%s: shards committed in %.1f s -> %s", name, seconds, art.path)
    return StageResult(name, "ran", key, str(art.path), seconds)
