"""Stage ``sample``: for the first ``n_examples`` test prompts and each site,
``samples_per_example`` samples conditioned on that prompt's activation z_hat, drawn with the
method the controls checkpoint holds and measured by the target (``core.inversion.Inverter``):
each sample's text and cosine distance to z_hat. Acceptance (distance < ε) is read downstream,
so ε is in no key of this stage (except where the sampling method reads it: InversionView's
noise).

The work is cut into (site, group of ``group_size`` references) units, each with its own
random streams seeded by (seed, site, group) and its own Parquet part, written atomically and
then marked done: the samples depend neither on how units are grouped into shards (fan-out)
nor on the order of resumption, and a killed run redoes only the units without a marker. The
manifest lists the parts; readers never glob.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from inversescope.storage import layout, shards
from inversescope.storage.activations import ActivationStore
from inversescope.storage.tables import write_parquet_atomic
from inversescope.tasks import task_renderer

if TYPE_CHECKING:
    from inversescope.config import RunConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "sample"
INPUTS: tuple[str, ...] = ("extract", "target", "backbone", "controls")
RESUMABLE = True
CODE: tuple[str, ...] = ("inversescope.core.methods",)  # layout.load_controls runs it


def config_of(run: RunConfig) -> dict[str, Any]:
    return {
        "seed": run.seed,
        **run.sample.model_dump(mode="json", exclude={"sites"}),
        **run.controls.sampling_key(run.kernel),
        "sites": run.sample_sites,
    }


def group_seed(seed: int, site: str, group: int) -> int:
    """The seed of one (site, group) unit: its samples depend on nothing else."""
    key = f"{seed}/{site}/{group}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def units(run: RunConfig) -> list[tuple[str, int]]:
    """Every (site, group) unit of a run, in site order then group order."""
    n_groups = -(-run.sample.n_examples // run.sample.group_size)
    return [(site, group) for site in run.sample_sites for group in range(n_groups)]


def load_inverter(ctx: StageContext):
    """The backbone, the trained controls and the target of the stage's inputs, loaded once."""
    # torch deferred: computing keys must not import it
    from inversescope.core.inversion import Inverter
    from inversescope.core.models import pick_device, pick_dtype

    run, target = ctx.run, ctx.inputs["target"]
    device = pick_device(run.device)
    backbone, tokenizer = layout.load_backbone(ctx.inputs["backbone"], device)
    method, model = layout.load_controls(ctx.inputs["controls"], backbone)
    target_model, target_tok = layout.load_target(target, device, pick_dtype(run.dtype, device))
    render = task_renderer(run.task, target_tok, layout.target_prefix(target))
    return Inverter(
        method, model, backbone, tokenizer, target_model, target_tok, render,
        run.extract.batch_size,
    )  # fmt: skip


def run_unit(ctx: StageContext, inverter, site: str, group: int, progress=None) -> dict:
    """Draw and measure one unit's samples; write its part, then its marker."""
    run, s = ctx.run, ctx.run.sample
    per = s.samples_per_example
    first = group * s.group_size
    last = min(first + s.group_size, s.n_examples)
    z_ref = ActivationStore(ctx.inputs["extract"].path).read("test", site, first, last)
    example = np.repeat(np.arange(first, last), per)  # (examples * per,)
    on_batch = progress.update if progress is not None else None
    t0 = time.perf_counter()
    texts, dist = inverter.sample(
        z_ref[example - first], site, s, run.kernel, group_seed(run.seed, site, group), on_batch
    )
    df = pl.DataFrame(
        {
            "site": [site] * len(texts),
            "example_id": example.astype(np.int64),
            "sample_idx": np.tile(np.arange(per), last - first).astype(np.int64),
            "text": texts,
            "distance": dist,
        }
    )
    part = layout.sample_part(ctx.out, site, group)
    part.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(df, part)
    seconds = round(time.perf_counter() - t0, 3)
    info = {"site": site, "group": group, "samples": len(texts), "seconds": seconds}
    shards.mark_done(ctx.out, _unit_id(site, group), info)
    return info


def _unit_id(site: str, group: int) -> str:
    return f"{site}-{group:05d}"


def _todo(ctx: StageContext) -> list[tuple[str, int]]:
    return [u for u in units(ctx.run) if not shards.is_done(ctx.out, _unit_id(*u))]


def _run_all(ctx: StageContext, todo: list[tuple[str, int]], label: str) -> None:
    from inversescope.core.progress import Progress  # deferred with torch

    s = ctx.run.sample
    n = sum(min(s.group_size, s.n_examples - g * s.group_size) for _, g in todo)
    progress = Progress(label, n * s.samples_per_example, "samples")
    inverter = load_inverter(ctx)
    for site, group in todo:
        run_unit(ctx, inverter, site, group, progress)


# --- the stage: local build, or plan / run_shard / finish when fanned out ---------------
def plan(ctx: StageContext, n_shards: int | None) -> list[dict]:
    """The units still to draw, grouped into about ``n_shards`` shards (each loads the models
    once)."""
    todo = _todo(ctx)
    groups = shards.spread(len(todo), n_shards or len(todo)) if todo else []
    return [
        {"id": _unit_id(*todo[g.start]), "units": [list(u) for u in todo[g.start : g.stop]]}
        for g in groups
    ]


def run_shard(ctx: StageContext, shard: dict) -> dict[str, Any]:
    """One shard's units, in whatever process runs it (models load once for them)."""
    todo = [(site, group) for site, group in shard["units"]]
    todo = [u for u in todo if not shards.is_done(ctx.out, _unit_id(*u))]
    if todo:
        _run_all(ctx, todo, f"sample[{shard['id']}]")
    return {"id": shard["id"], "units": len(todo)}


def build(ctx: StageContext) -> dict[str, Any]:
    todo = _todo(ctx)
    all_units = units(ctx.run)
    if len(todo) < len(all_units):
        log.info(
            "sample: resuming, %d of %d units already done",
            len(all_units) - len(todo),
            len(all_units),
        )
    if todo:
        _run_all(ctx, todo, "sample")
    return finish(ctx)


def finish(ctx: StageContext) -> dict[str, Any]:
    """Check every unit's marker, then the manifest's metrics (the parts in reading order)."""
    all_units = units(ctx.run)
    left = [u for u in all_units if not shards.is_done(ctx.out, _unit_id(*u))]
    if left:
        raise RuntimeError(f"sample: {len(left)} (site, group) units are not done, e.g. {left[0]}")
    parts = [layout.sample_part_name(site, group) for site, group in all_units]
    n_samples = layout.scan_sample_parts(ctx.out, parts).select(pl.len()).collect().item()
    seconds = sum(m["seconds"] for m in shards.read_markers(ctx.out).values())
    return {
        "method": ctx.run.controls.method,
        "parts": parts,
        "n_samples": n_samples,
        "samples_per_second": n_samples / seconds if seconds else None,
    }
