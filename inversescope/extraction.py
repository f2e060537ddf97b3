"""Extraction: read sites of a loaded model at the last token of every text into a Zarr
activation store, in chunk-aligned row ranges (``storage.shards.row_ranges``), each range
written whole and then marked done, so a rerun resumes from the ranges left. Called by stage
``extract`` (one process or fanned out) and usable on its own (``extract_to_store``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from inversescope.storage import shards
from inversescope.storage.activations import STORE, ActivationStore, RegionWriter, create_store
from inversescope.storage.files import Where, tree_size

if TYPE_CHECKING:
    from inversescope.core.config import ExtractConfig

log = logging.getLogger(__name__)


class Extractor:
    """A loaded target reading sites into the store, shard by shard."""

    def __init__(self, model, tokenizer, cfg: ExtractConfig, texts: dict[str, list[str]], render):
        # nnsight deferred: computing keys must not import it
        from inversescope.core.extract import SiteReader

        self.reader = SiteReader(model, tokenizer, cfg.sites, render=render)
        self.cfg, self.texts = cfg, texts

    def run(self, out: Where, shard: dict, progress=None) -> dict[str, Any]:
        """Read the shard's rows chunk by chunk into the store, then mark the shard done."""
        cfg, split = self.cfg, shard["split"]
        writer = RegionWriter(out, split, cfg.sites)
        t0 = time.perf_counter()
        for start in range(shard["start"], shard["stop"], cfg.chunk_rows):
            stop = min(start + cfg.chunk_rows, shard["stop"])
            block: dict[str, list[np.ndarray]] = {s: [] for s in cfg.sites}
            for b in range(start, stop, cfg.batch_size):
                acts = self.reader.read(self.texts[split][b : min(b + cfg.batch_size, stop)])
                for site, value in acts.items():
                    block[site].append(value.numpy())  # (batch, d)
                if progress is not None:
                    progress.update(min(b + cfg.batch_size, stop) - b)
            writer.write(start, {s: np.concatenate(v) for s, v in block.items()})  # (rows, d)
        info = {
            "split": split,
            "start": shard["start"],
            "stop": shard["stop"],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        shards.mark_done(out, shard["id"], info)
        return info


def create(out: Where, cfg: ExtractConfig, rows: dict[str, int], d_model: int, attrs: dict):
    create_store(
        out,
        rows,
        {s: d_model for s in cfg.sites},
        cfg.chunk_rows,
        cfg.dtype,
        {"position": cfg.position, "sites": cfg.sites, **attrs},
    )


def run_all(extractor: Extractor, out: Where, shard_list: list[dict], cfg, on_chunk=None):
    # progress deferred: computing keys must not import torch
    from inversescope.core.progress import Progress

    total = sum(s["stop"] - s["start"] for s in shard_list)
    log.info("extract: %d rows in %d shards to read", total, len(shard_list))
    progress = Progress("extract", total, "rows")
    for shard in shard_list:
        extractor.run(out, shard, progress)
        if on_chunk is not None:  # after the marker: the rows are committed
            on_chunk(shard["split"], shard["stop"])


def store_metrics(out: Where, cfg, rows: dict[str, int]) -> dict[str, Any]:
    markers = shards.read_markers(out)
    seconds = sum(m["seconds"] for m in markers.values())
    total = sum(rows.values())
    d = ActivationStore(out).array(next(iter(rows)), cfg.sites[0]).shape[1]
    store_bytes = tree_size(out / STORE)
    raw_bytes = total * len(cfg.sites) * d * np.dtype(cfg.dtype).itemsize
    return {
        "rows": rows,
        "sites": cfg.sites,
        "d_model": d,
        "store_bytes": store_bytes,
        "raw_bytes": raw_bytes,
        "compression_ratio": raw_bytes / store_bytes if store_bytes else None,
        "shards": len(markers),
        "rows_per_second": total / seconds if seconds else None,
    }


def extract_to_store(
    model,
    tokenizer,
    texts: dict[str, list[str]],
    cfg,
    out: Where,
    model_ref: str,
    on_chunk=None,
    render=None,
) -> dict[str, Any]:
    """Read ``cfg.sites`` for every text of every split into ``out/activations.zarr`` with a
    loaded model (``render``: the string the target reads for a text, default the text itself),
    resuming from the chunks already marked done. ``on_chunk(split, stop)`` is called after each
    written chunk."""
    from inversescope.core.architectures import dims_of

    rows = {split: len(t) for split, t in texts.items()}
    dims = dims_of(model.config)
    attrs = {
        "rendered": render is not None,
        "model": model_ref,
        "target_key": model_ref,
        "architecture": dims.architecture,
    }
    create(out, cfg, rows, dims.d_model, attrs)
    left = shards.ranges_todo(out, shards.row_ranges(rows, cfg.chunk_rows, None), cfg.chunk_rows)
    if left:
        run_all(Extractor(model, tokenizer, cfg, texts, render), out, left, cfg, on_chunk)
    return store_metrics(out, cfg, rows)
