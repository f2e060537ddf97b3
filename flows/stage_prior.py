"""Stage ``prior``: the task's train and test prompts as Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from inversescope.storage.artifacts import Artifact
from inversescope.storage.tables import write_parquet_atomic
from inversescope.tasks import load_task, task_module_name

if TYPE_CHECKING:
    from inversescope.flows.config import RunConfig

NAME = "prior"
INPUTS: tuple[str, ...] = ()
RESUMABLE = False
SPLITS = ("train", "test")


def config_of(run: RunConfig) -> dict[str, Any]:
    return {"task": run.task, "seed": run.seed, **run.prior.model_dump(mode="json")}


def extra_code(run: RunConfig) -> tuple[tuple[str, ...], tuple[Path, ...]]:
    return (task_module_name(run.task),), ()


def build(run: RunConfig, inputs: dict[str, Artifact], out: Path) -> dict[str, Any]:
    task = load_task(run.task)
    train, test = task.generate_prior(run.prior.n_train, run.prior.n_test, run.seed)
    for split, rows in zip(SPLITS, (train, test), strict=True):
        df = pl.DataFrame(rows).select("id", "text", pl.exclude("id", "text"))
        write_parquet_atomic(df, out / f"{split}.parquet")
    return {"rows": {"train": len(train), "test": len(test)}}


def read_split(artifact: Artifact | Path, split: str) -> pl.DataFrame:
    root = artifact.path if isinstance(artifact, Artifact) else Path(artifact)
    return pl.read_parquet(root / f"{split}.parquet")
