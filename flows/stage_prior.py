"""Stage ``prior``: the task's train and test prompts as Parquet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from inversescope.storage import layout
from inversescope.storage.keys import file_fingerprint, source_fingerprint
from inversescope.tasks import PriorOptions, load_task, resolve_data_file, task_module_name

if TYPE_CHECKING:
    from inversescope.config import RunConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "prior"
INPUTS: tuple[str, ...] = ()
RESUMABLE = False


def uses_target_tokenizer(run: RunConfig) -> bool:
    """The task filters by target tokens and the target's tokenizer exists before the prior (a
    target trained here gets its tokenizer from the prior)."""
    task = load_task(run.task)
    return bool(getattr(task, "PRIOR_USES_TOKENIZER", False)) and run.target.source != "train"


def config_of(run: RunConfig) -> dict[str, Any]:
    cfg = {"task": run.task, "seed": run.seed, **run.prior.model_dump(mode="json")}
    cfg["file_content"] = [file_fingerprint(resolve_data_file(f)) for f in run.prior.files]
    if uses_target_tokenizer(run):
        cfg["tokenizer"] = source_fingerprint(run.target)
    return cfg


def extra_code(run: RunConfig) -> tuple[tuple[str, ...], tuple[Path, ...]]:
    return (task_module_name(run.task),), ()


def target_token_counter(run: RunConfig):
    """``len(target tokens of text)`` with the target's own tokenizer (hub or local)."""
    # transformers deferred: only tasks that filter by target tokens need it
    from inversescope.core.models import load_tokenizer

    tok = load_tokenizer(*run.target.location)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def build(ctx: StageContext) -> dict[str, Any]:
    run = ctx.run
    task = load_task(run.task)
    options = PriorOptions(
        files=tuple(resolve_data_file(f) for f in run.prior.files),
        max_tokens=run.prior.max_tokens,
        count_tokens=target_token_counter(run) if uses_target_tokenizer(run) else None,
    )
    train, test = task.generate_prior(run.prior.n_train, run.prior.n_test, run.seed, options)
    for split, rows in zip(layout.SPLITS, (train, test), strict=True):
        df = pl.DataFrame(rows).select("id", "text", pl.exclude("id", "text"))
        layout.write_split(ctx.out, split, df)
    return {"rows": {"train": len(train), "test": len(test)}}
