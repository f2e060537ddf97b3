"""Stage ``extract``: every configured site at the last prompt token, into a Zarr store.

Works one row-chunk at a time (peak memory is one chunk, whatever the number of prompts) and
commits chunk by chunk, so a killed run resumes from its last committed chunk.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inversescope.storage import layout
from inversescope.storage.activations import STORE, ActivationWriter
from inversescope.tasks import task_renderer

if TYPE_CHECKING:
    from inversescope.flows.config import RunConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "extract"
INPUTS: tuple[str, ...] = ("prior", "target")
RESUMABLE = True


def config_of(run: RunConfig) -> dict[str, Any]:
    return run.extract.model_dump(mode="json")


def build(ctx: StageContext) -> dict[str, Any]:
    # torch deferred: computing keys must not import it
    from inversescope.core.models import pick_device, pick_dtype

    run, target, prior = ctx.run, ctx.inputs["target"], ctx.inputs["prior"]
    device = pick_device(run.device)
    model, tokenizer = layout.load_target(target, device, pick_dtype(run.dtype, device))
    texts = {split: layout.read_split(prior, split)["text"].to_list() for split in layout.SPLITS}
    render = task_renderer(run.task, tokenizer, layout.target_prefix(target))
    return extract_to_store(
        model, tokenizer, texts, run.extract, ctx.out, target.key, render=render
    )


def extract_to_store(
    model,
    tokenizer,
    texts: dict[str, list[str]],
    cfg,
    out: Path,
    model_ref: str,
    on_chunk=None,
    render=None,
) -> dict[str, Any]:
    """Read ``cfg.sites`` for every text of every split into ``out/activations.zarr``
    (``render``: the string the target reads for a text, default the text itself).

    ``on_chunk(split, stop)`` is called after each committed chunk.
    """
    # torch and nnsight deferred: computing keys must not import them
    from inversescope.core.extract import SiteReader
    from inversescope.core.progress import Progress

    reader = SiteReader(model, tokenizer, cfg.sites, render=render)
    d = reader.dims.d_model
    attrs = {
        "position": cfg.position,
        "rendered": render is not None,
        "model": getattr(model.config, "_name_or_path", "") or model_ref,
        "target_key": model_ref,
        "architecture": reader.dims.architecture,
        "sites": cfg.sites,
    }
    writer = ActivationWriter(
        out,
        {s: len(t) for s, t in texts.items()},
        {s: d for s in cfg.sites},
        cfg.chunk_rows,
        cfg.dtype,
        attrs,
    )
    total = sum(len(t) for t in texts.values())
    done = sum(writer.committed.values())
    if done:
        log.info("extract: resuming with %d of %d rows already committed", done, total)
    progress = Progress("extract", total, "rows", start=done)
    for split, split_texts in texts.items():
        for start, stop in writer.chunks_todo(split):
            block: dict[str, list[np.ndarray]] = {s: [] for s in cfg.sites}
            for b in range(start, stop, cfg.batch_size):
                acts = reader.read(split_texts[b : min(b + cfg.batch_size, stop)])
                for site, value in acts.items():
                    block[site].append(value.numpy())
                progress.update(min(b + cfg.batch_size, stop) - b)
            writer.write_chunk(split, start, {s: np.concatenate(v) for s, v in block.items()})
            if on_chunk is not None:
                on_chunk(split, stop)
    assert writer.complete()
    store_bytes = sum(f.stat().st_size for f in (out / STORE).rglob("*") if f.is_file())
    raw_bytes = total * len(cfg.sites) * d * np.dtype(cfg.dtype).itemsize
    return {
        "rows": {s: len(t) for s, t in texts.items()},
        "sites": cfg.sites,
        "d_model": d,
        "store_bytes": store_bytes,
        "raw_bytes": raw_bytes,
        "compression_ratio": raw_bytes / store_bytes if store_bytes else None,
        "rows_per_second": progress.rate,
    }
