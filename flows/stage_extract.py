"""Stage ``extract``: every configured site at the last prompt token, into a Zarr store.

The store is created at its full shape first; then shards, row ranges aligned to the store's
chunks (so no two writers touch one chunk), each write every site for their rows and then a
done-marker (``storage.shards``). A rerun skips the ranges markers cover; the stage commits once
every range is covered. Run locally, every chunk is its own shard (a killed run resumes from its
last written chunk, one model load for all); fanned out (``runner.kind: dask``), shards are a few
chunks each and every shard loads the target once. Peak memory is one chunk's activations.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from inversescope import extraction
from inversescope.storage import layout, shards
from inversescope.tasks import task_renderer

if TYPE_CHECKING:
    from inversescope.config import RunConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "extract"
INPUTS: tuple[str, ...] = ("prior", "target")
RESUMABLE = True
CODE: tuple[str, ...] = ("inversescope.core.extract",)  # extraction.Extractor reads with it


def config_of(run: RunConfig) -> dict[str, Any]:
    return run.extract.model_dump(mode="json")


def _texts(ctx: StageContext) -> dict[str, list[str]]:
    prior = ctx.inputs["prior"]
    return {split: layout.read_split(prior, split)["text"].to_list() for split in layout.SPLITS}


def _load(ctx: StageContext) -> extraction.Extractor:
    # torch deferred: computing keys must not import it
    from inversescope.core.models import pick_device, pick_dtype

    run, target = ctx.run, ctx.inputs["target"]
    device = pick_device(run.device)
    model, tokenizer = layout.load_target(target, device, pick_dtype(run.dtype, device))
    render = task_renderer(run.task, tokenizer, layout.target_prefix(target))
    return extraction.Extractor(model, tokenizer, run.extract, _texts(ctx), render)


def _attrs(ctx: StageContext, rendered: bool) -> tuple[dict[str, Any], int]:
    """The store's attributes (what was read, from which target, rendered or not) and the
    target's width, from its config alone."""
    # transformers deferred: computing keys must not import it
    from inversescope.core.architectures import dims_of

    target = ctx.inputs["target"]
    dims = dims_of(layout.target_model_config(target))
    attrs = {
        "rendered": rendered,
        "model": layout.target_name(target),
        "target_key": target.key,
        "architecture": dims.architecture,
    }
    return attrs, dims.d_model


# --- the stage: local build, or plan / run_shard / finish when fanned out ---------------
def plan(ctx: StageContext, n_shards: int | None) -> list[dict]:
    """Create the store at its full shape (once) and return the shards still to run."""
    cfg = ctx.run.extract
    rows = {split: len(t) for split, t in _texts(ctx).items()}
    prefix = layout.target_prefix(ctx.inputs["target"])
    attrs, d_model = _attrs(ctx, task_renderer(ctx.run.task, None, prefix) is not None)
    extraction.create(ctx.out, cfg, rows, d_model, attrs)
    return shards.ranges_todo(
        ctx.out, shards.row_ranges(rows, cfg.chunk_rows, n_shards), cfg.chunk_rows
    )


def run_shard(ctx: StageContext, shard: dict) -> dict[str, Any]:
    """One shard, in whatever process runs it: the target loads once for the shard's rows."""
    # progress deferred with the model: computing keys must not import torch
    from inversescope.core.progress import Progress

    if not shards.ranges_todo(ctx.out, [shard], ctx.run.extract.chunk_rows):  # another run wrote it
        return {"id": shard["id"], "skipped": True}
    extractor = _load(ctx)
    progress = Progress(f"extract[{shard['id']}]", shard["stop"] - shard["start"], "rows")
    return extractor.run(ctx.out, shard, progress)


def finish(ctx: StageContext) -> dict[str, Any]:
    """Check that markers cover every row, then the manifest's metrics."""
    cfg = ctx.run.extract
    rows = {split: len(t) for split, t in _texts(ctx).items()}
    left = shards.ranges_todo(
        ctx.out, shards.row_ranges(rows, cfg.chunk_rows, None), cfg.chunk_rows
    )
    if left:
        raise RuntimeError(f"extract: {len(left)} chunks have no done-marker, e.g. {left[0]}")
    return extraction.store_metrics(ctx.out, cfg, rows)


def build(ctx: StageContext) -> dict[str, Any]:
    shard_list = plan(ctx, None)
    total = sum(len(t) for t in _texts(ctx).values())
    left = sum(s["stop"] - s["start"] for s in shard_list)
    if left < total:
        log.info("extract: resuming, %d of %d rows already written", total - left, total)
    if shard_list:
        extraction.run_all(_load(ctx), ctx.out, shard_list, ctx.run.extract)
    return finish(ctx)
