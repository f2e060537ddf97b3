"""Stage ``sample``: ``samples_per_example`` samples for each of the first ``n_examples`` test
prompts at each site, with their cosine distance to the prompt's activation
(``inversescope.sampling``). Acceptance (distance < ε) is read downstream: ε is in no key of
this stage, except where the method reads it (InversionView's noise). Work comes in (site,
group) units, each with its own random stream and Parquet part, written atomically and then
marked done, so a killed run redoes only the units without a marker; the manifest lists the
parts, readers never glob.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import polars as pl

from inversescope import sampling
from inversescope.storage import layout, shards
from inversescope.storage.activations import ActivationStore

if TYPE_CHECKING:
    from inversescope.config import RunConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "sample"
INPUTS: tuple[str, ...] = ("extract", "target", "backbone", "controls")
RESUMABLE = True
# layout.load_controls and the Inverter run these (imported inside functions below them)
CODE: tuple[str, ...] = (
    "inversescope.core.methods",
    "inversescope.core.inversion",
    "inversescope.core.models",
)


def config_of(run: RunConfig) -> dict[str, Any]:
    return {
        "seed": run.seed,
        **run.sample.model_dump(mode="json", exclude={"sites"}),
        **run.controls.sampling_key(run.kernel),
        "sites": run.sample_sites,
    }


def run_unit(ctx: StageContext, inverter, site: str, group: int, progress=None) -> dict:
    """Draw and measure one unit's samples; write its part, then its marker."""
    s = ctx.run.sample
    first = group * s.group_size
    last = min(first + s.group_size, s.n_examples)
    z_ref = ActivationStore(ctx.inputs["extract"].path).read("test", site, first, last)
    t0 = time.perf_counter()
    on_batch = progress.update if progress is not None else None
    df = sampling.sample_group(inverter, ctx.run, site, group, z_ref, on_batch)
    layout.write_sample_part(ctx.out, site, group, df)
    info = {"site": site, "group": group, "samples": df.height,
            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    shards.mark_done(ctx.out, _unit_id(site, group), info)
    return info


def _unit_id(site: str, group: int) -> str:
    return f"{site}-{group:05d}"


def _todo(ctx: StageContext) -> list[tuple[str, int]]:
    done = shards.done_ids(ctx.out)
    return [u for u in sampling.units(ctx.run) if _unit_id(*u) not in done]


def _run_all(ctx: StageContext, todo: list[tuple[str, int]], label: str) -> None:
    from inversescope.core.progress import Progress  # deferred with torch

    s = ctx.run.sample
    n = sum(min(s.group_size, s.n_examples - g * s.group_size) for _, g in todo)
    progress = Progress(label, n * s.samples_per_example, "samples")
    i = ctx.inputs
    inverter = sampling.load_inverter(ctx.run, i["backbone"], i["controls"], i["target"])
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
    done = shards.done_ids(ctx.out)
    todo = [u for u in todo if _unit_id(*u) not in done]
    if todo:
        _run_all(ctx, todo, f"sample[{shard['id']}]")
    return {"id": shard["id"], "units": len(todo)}


def build(ctx: StageContext) -> dict[str, Any]:
    todo = _todo(ctx)
    all_units = sampling.units(ctx.run)
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
    all_units = sampling.units(ctx.run)
    done = shards.done_ids(ctx.out)
    left = [u for u in all_units if _unit_id(*u) not in done]
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
