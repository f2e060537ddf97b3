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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inversescope.storage import layout, shards
from inversescope.storage.activations import STORE, ActivationStore, RegionWriter, create_store
from inversescope.tasks import task_renderer

if TYPE_CHECKING:
    from inversescope.config import RunConfig
    from inversescope.core.config import ExtractConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "extract"
INPUTS: tuple[str, ...] = ("prior", "target")
RESUMABLE = True


def config_of(run: RunConfig) -> dict[str, Any]:
    return run.extract.model_dump(mode="json")


# --- planning ---------------------------------------------------------------------------
def plan_shards(rows: dict[str, int], chunk_rows: int, n_shards: int | None) -> list[dict]:
    """Row ranges aligned to chunks, never across splits: one chunk each (``n_shards`` None) or
    about ``n_shards`` ranges of whole chunks."""
    chunks = [(split, start) for split, n in rows.items() for start in range(0, n, chunk_rows)]
    groups = (
        [[c] for c in chunks]
        if n_shards is None
        else [chunks[r.start : r.stop] for r in shards.spread(len(chunks), n_shards)]
    )
    out = []
    for group in groups:
        for split in dict.fromkeys(s for s, _ in group):  # a group may straddle two splits
            starts = [start for s, start in group if s == split]
            stop = min(starts[-1] + chunk_rows, rows[split])
            out.append(
                {
                    "id": f"{split}-{starts[0]:010d}",
                    "split": split,
                    "start": starts[0],
                    "stop": stop,
                }
            )
    return out


def _covered(out: Path, chunk_rows: int) -> set[tuple[str, int]]:
    """(split, chunk start) of every chunk a done-marker covers."""
    done = set()
    for info in shards.read_markers(out).values():
        done.update((info["split"], s) for s in range(info["start"], info["stop"], chunk_rows))
    return done


def todo(out: Path, shard_list: list[dict], chunk_rows: int) -> list[dict]:
    """The shards some of whose chunks no marker covers (markers of any earlier plan count)."""
    done = _covered(out, chunk_rows)
    return [
        s
        for s in shard_list
        if any((s["split"], c) not in done for c in range(s["start"], s["stop"], chunk_rows))
    ]


# --- the work ---------------------------------------------------------------------------
class Extractor:
    """A loaded target reading sites into the store, shard by shard."""

    def __init__(self, model, tokenizer, cfg: ExtractConfig, texts: dict[str, list[str]], render):
        # nnsight deferred: computing keys must not import it
        from inversescope.core.extract import SiteReader

        self.reader = SiteReader(model, tokenizer, cfg.sites, render=render)
        self.cfg, self.texts = cfg, texts

    def run(self, out: Path, shard: dict, progress=None) -> dict[str, Any]:
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


def _texts(ctx: StageContext) -> dict[str, list[str]]:
    prior = ctx.inputs["prior"]
    return {split: layout.read_split(prior, split)["text"].to_list() for split in layout.SPLITS}


def _load(ctx: StageContext) -> Extractor:
    # torch deferred: computing keys must not import it
    from inversescope.core.models import pick_device, pick_dtype

    run, target = ctx.run, ctx.inputs["target"]
    device = pick_device(run.device)
    model, tokenizer = layout.load_target(target, device, pick_dtype(run.dtype, device))
    render = task_renderer(run.task, tokenizer, layout.target_prefix(target))
    return Extractor(model, tokenizer, run.extract, _texts(ctx), render)


def _create(out: Path, cfg: ExtractConfig, rows: dict[str, int], d_model: int, attrs: dict):
    create_store(
        out,
        rows,
        {s: d_model for s in cfg.sites},
        cfg.chunk_rows,
        cfg.dtype,
        {"position": cfg.position, "sites": cfg.sites, **attrs},
    )


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
    _create(ctx.out, cfg, rows, d_model, attrs)
    return todo(ctx.out, plan_shards(rows, cfg.chunk_rows, n_shards), cfg.chunk_rows)


def run_shard(ctx: StageContext, shard: dict) -> dict[str, Any]:
    """One shard, in whatever process runs it: the target loads once for the shard's rows."""
    # progress deferred with the model: computing keys must not import torch
    from inversescope.core.progress import Progress

    if not todo(ctx.out, [shard], ctx.run.extract.chunk_rows):  # another run wrote it
        return {"id": shard["id"], "skipped": True}
    extractor = _load(ctx)
    progress = Progress(f"extract[{shard['id']}]", shard["stop"] - shard["start"], "rows")
    return extractor.run(ctx.out, shard, progress)


def finish(ctx: StageContext) -> dict[str, Any]:
    """Check that markers cover every row, then the manifest's metrics."""
    cfg = ctx.run.extract
    rows = {split: len(t) for split, t in _texts(ctx).items()}
    left = todo(ctx.out, plan_shards(rows, cfg.chunk_rows, None), cfg.chunk_rows)
    if left:
        raise RuntimeError(f"extract: {len(left)} chunks have no done-marker, e.g. {left[0]}")
    return _metrics(ctx.out, cfg, rows)


def build(ctx: StageContext) -> dict[str, Any]:
    shard_list = plan(ctx, None)
    total = sum(len(t) for t in _texts(ctx).values())
    left = sum(s["stop"] - s["start"] for s in shard_list)
    if left < total:
        log.info("extract: resuming, %d of %d rows already written", total - left, total)
    if shard_list:
        _run_all(_load(ctx), ctx.out, shard_list, ctx.run.extract)
    return finish(ctx)


def _run_all(extractor: Extractor, out: Path, shard_list: list[dict], cfg, on_chunk=None):
    # progress deferred: computing keys must not import torch
    from inversescope.core.progress import Progress

    total = sum(s["stop"] - s["start"] for s in shard_list)
    log.info("extract: %d rows in %d shards to read", total, len(shard_list))
    progress = Progress("extract", total, "rows")
    for shard in shard_list:
        extractor.run(out, shard, progress)
        if on_chunk is not None:  # after the marker: the rows are committed
            on_chunk(shard["split"], shard["stop"])


def _metrics(out: Path, cfg, rows: dict[str, int]) -> dict[str, Any]:
    markers = shards.read_markers(out)
    seconds = sum(m["seconds"] for m in markers.values())
    total = sum(rows.values())
    d = ActivationStore(out).array(next(iter(rows)), cfg.sites[0]).shape[1]
    store_bytes = sum(f.stat().st_size for f in (out / STORE).rglob("*") if f.is_file())
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
    out: Path,
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
    _create(out, cfg, rows, dims.d_model, attrs)
    left = todo(out, plan_shards(rows, cfg.chunk_rows, None), cfg.chunk_rows)
    if left:
        _run_all(Extractor(model, tokenizer, cfg, texts, render), out, left, cfg, on_chunk)
    return _metrics(out, cfg, rows)
