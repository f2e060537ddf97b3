"""Stage ``prior``: the task's train and test prompts as Parquet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from inversescope.storage.artifacts import Artifact
from inversescope.storage.keys import file_fingerprint
from inversescope.storage.tables import write_parquet_atomic
from inversescope.tasks import PriorOptions, load_task, resolve_data_file, task_module_name

if TYPE_CHECKING:
    from inversescope.flows.config import RunConfig

log = logging.getLogger(__name__)

NAME = "prior"
INPUTS: tuple[str, ...] = ()
RESUMABLE = False
SPLITS = ("train", "test")


def uses_target_tokenizer(run: RunConfig) -> bool:
    """The task filters by target tokens and the target's tokenizer exists before the prior (a
    target trained here gets its tokenizer from the prior)."""
    task = load_task(run.task)
    return bool(getattr(task, "PRIOR_USES_TOKENIZER", False)) and run.target.source != "train"


def config_of(run: RunConfig) -> dict[str, Any]:
    cfg = {"task": run.task, "seed": run.seed, **run.prior.model_dump(mode="json")}
    cfg["file_content"] = [file_fingerprint(resolve_data_file(f)) for f in run.prior.files]
    if uses_target_tokenizer(run):
        t = run.target
        cfg["tokenizer"] = {
            "name": t.name,
            "revision": t.revision,
            "path": str(t.path) if t.path else None,
            "content": file_fingerprint(t.path) if t.path else None,
        }
    return cfg


def extra_code(run: RunConfig) -> tuple[tuple[str, ...], tuple[Path, ...]]:
    return (task_module_name(run.task),), ()


def target_token_counter(run: RunConfig):
    """``len(target tokens of text)`` with the target's own tokenizer (hub or local)."""
    from inversescope.core.models import load_tokenizer

    t = run.target
    tok = load_tokenizer(t.path) if t.source == "local" else load_tokenizer(t.name, t.revision)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def build(run: RunConfig, inputs: dict[str, Artifact], out: Path) -> dict[str, Any]:
    task = load_task(run.task)
    options = PriorOptions(
        files=tuple(resolve_data_file(f) for f in run.prior.files),
        max_tokens=run.prior.max_tokens,
        count_tokens=target_token_counter(run) if uses_target_tokenizer(run) else None,
    )
    train, test = task.generate_prior(run.prior.n_train, run.prior.n_test, run.seed, options)
    for split, rows in zip(SPLITS, (train, test), strict=True):
        df = pl.DataFrame(rows).select("id", "text", pl.exclude("id", "text"))
        write_parquet_atomic(df, out / f"{split}.parquet")
    return {"rows": {"train": len(train), "test": len(test)}}


def read_split(artifact: Artifact | Path, split: str) -> pl.DataFrame:
    root = artifact.path if isinstance(artifact, Artifact) else Path(artifact)
    return pl.read_parquet(root / f"{split}.parquet")
