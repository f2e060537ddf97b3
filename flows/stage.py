"""Running one stage with our own cache: key, lookup, lock, build in a partial directory,
commit atomically.

Every stage module follows the ``Stage`` protocol below. The key of a stage = hash(its
``config_of(run)``, its inputs' keys, the source closure of its module and ``extra_code``).
A stage's ``build`` gets a ``StageContext`` (the run, its input artifacts, the partial directory
to write, its key and the workdir) and reads and writes files only through
``inversescope.storage.layout``.
"""

from __future__ import annotations

import importlib
import logging
import random
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, cast

from inversescope.storage.artifacts import Artifact, ArtifactStore, Timer
from inversescope.storage.keys import code_hash, stage_key

if TYPE_CHECKING:
    from inversescope.flows.config import RunConfig

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
)


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
    out: Path  # the partial directory to write (renamed into place on commit)
    key: str  # this artifact's cache key
    workdir: Path


class Stage(Protocol):
    """The contract of a stage module (``inversescope.flows.stage_<NAME>``)."""

    NAME: str
    INPUTS: tuple[str, ...]  # upstream stages whose artifacts ``build`` reads
    RESUMABLE: bool  # keep the partial directory of a killed run and resume from it

    def config_of(self, run: RunConfig) -> dict[str, Any]:
        """What of the run config the artifact depends on (JSON-able, no I/O beyond
        fingerprints of files the run names)."""
        ...

    def build(self, ctx: StageContext) -> dict[str, Any]:
        """Write the artifact into ``ctx.out``; return the manifest's metrics."""
        ...


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

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_keys(run: RunConfig, names: tuple[str, ...] = STAGE_ORDER) -> dict[str, str]:
    """Keys of ``names`` and of everything they read, each computed once. A key hashes the
    stage's config, its inputs' keys and its source closure. A flow takes this snapshot at its
    start, so source edited while it runs cannot split one run across two keys."""
    keys: dict[str, str] = {}

    def key(name: str) -> str:
        if name not in keys:
            mod = stage_module(name)
            extra = getattr(mod, "extra_code", None)  # only prior runs code outside its closure
            modules, files = extra(run) if extra else ((), ())
            code = code_hash((cast(ModuleType, mod).__name__, *modules), tuple(files))
            inputs = {inp: key(inp) for inp in mod.INPUTS}
            keys[name] = stage_key(name, mod.config_of(run), inputs, code)
        return keys[name]

    for name in names:
        key(name)
    return keys


def run_stage(
    name: str, run: RunConfig, workdir: Path | str, keys: dict[str, str] | None = None
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
    inputs: dict[str, Artifact] = {}
    for inp in mod.INPUTS:
        inputs[inp] = store.require(inp, keys[inp])
    with store.lock(name, key):
        hit = store.lookup(name, key)  # another process may have built it while we waited
        if hit is not None:
            return StageResult(name, "cached", key, str(hit.path), round(timer.seconds, 3))
        partial = store.begin(name, key, resumable=mod.RESUMABLE)
        log.info("%s: building %s", name, store.path(name, key))
        seed_everything(run.seed)
        metrics = mod.build(StageContext(run, inputs, partial, key, store.workdir))
        seconds = round(timer.seconds, 3)
        art = store.commit(
            name,
            key,
            {
                "config": mod.config_of(run),
                "inputs": {k: v.key for k, v in inputs.items()},
                "run": run.model_dump(mode="json"),
                "seconds": seconds,
                "metrics": metrics,
            },
        )
    log.info("%s: done in %.1f s -> %s", name, seconds, art.path)
    return StageResult(name, "ran", key, str(art.path), seconds)
