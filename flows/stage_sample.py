"""Stage ``sample``: for the first ``n_examples`` test prompts and each site,
``samples_per_example`` samples conditioned on that prompt's activation z_hat, drawn with the
method the controls checkpoint holds, decoded to text and measured with the target exactly as
stage ``extract`` measures (``tokenizer(text)``, last token); cosine distance to z_hat;
``accepted = distance < ε``.

The work is cut into (site, block of ``block_examples`` references) units, each with its own
random streams seeded by (seed, site, block) and its own Parquet part, written atomically and
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
    from inversescope.flows.config import RunConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "sample"
INPUTS: tuple[str, ...] = ("extract", "target", "backbone", "controls")
RESUMABLE = True


def config_of(run: RunConfig) -> dict[str, Any]:
    # core.methods imports torch: deferred
    from inversescope.core.methods import method_for

    return {
        "seed": run.seed,
        "kernel": run.kernel.model_dump(mode="json"),
        **run.sample.model_dump(mode="json", exclude={"sites"}),
        **method_for(run.controls).sampling_config(run.kernel),
        "sites": run.sample_sites,
    }


def site_seed(seed: int, site: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{site}".encode()).digest()[:8], "little") >> 1


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos(a_i, b_i) row-wise, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return 1.0 - num / np.maximum(den, 1e-30)


def measure(reader, texts: list[str], z_hat: np.ndarray, site: str, batch: int) -> np.ndarray:
    """Cosine distance of each text's own activation at ``site`` to its z_hat row (NaN when the
    text is empty: it has no last token)."""
    out = np.full(len(texts), np.nan)
    idx = [i for i, t in enumerate(texts) if t]
    for b in range(0, len(idx), batch):
        rows = idx[b : b + batch]
        acts = reader.read([texts[i] for i in rows])[site].numpy()  # (len(rows), d)
        out[rows] = cosine_distance(acts, z_hat[rows])
    return out


def block_seed(seed: int, site: str, block: int) -> int:
    """The seed of one (site, block) unit: its samples depend on nothing else."""
    return site_seed(seed, f"{site}/{block}")


def units(run: RunConfig) -> list[tuple[str, int]]:
    """Every (site, block) unit of a run, in site order then block order."""
    n_blocks = -(-run.sample.n_examples // run.sample.block_examples)
    return [(site, block) for site in run.sample_sites for block in range(n_blocks)]


class Sampler:
    """The backbone, the trained controls and the target, loaded once, drawing and measuring
    the samples of one (site, block) unit at a time."""

    def __init__(self, ctx: StageContext):
        # torch deferred: computing keys must not import it
        from inversescope.core.models import pick_device, pick_dtype

        run, target = ctx.run, ctx.inputs["target"]
        self.run, self.out = run, ctx.out
        self.device = pick_device(run.device)
        self.store = ActivationStore(ctx.inputs["extract"].path)
        self.d_site = int(self.store.array("test", run.sample_sites[0]).shape[1])
        self.backbone, self.tokenizer = layout.load_backbone(ctx.inputs["backbone"], self.device)
        self.method, self.model = layout.load_controls(ctx.inputs["controls"], self.backbone)
        self.target, self.target_tok = layout.load_target(
            target, self.device, pick_dtype(run.dtype, self.device)
        )
        self.render = task_renderer(run.task, self.target_tok, layout.target_prefix(target))

    def run_unit(self, site: str, block: int, progress=None) -> dict[str, Any]:
        """Draw, decode and measure the unit's samples; write its part, then its marker."""
        # torch and nnsight deferred: computing keys must not import them
        import torch

        from inversescope.core.extract import SiteReader
        from inversescope.core.sampling import decode

        run, s, out = self.run, self.run.sample, self.out
        per, eos = s.samples_per_example, self.tokenizer.eos_token_id
        first = block * s.block_examples
        last = min(first + s.block_examples, s.n_examples)
        z_ref = self.store.read("test", site, first, last)  # (examples, d)
        example = np.repeat(np.arange(first, last), per)  # (examples * per,)
        z_all = z_ref[example - first]  # (examples * per, d)
        streams = self.method.streams(
            block_seed(run.seed, site, block), run.kernel, self.d_site, self.device
        )
        index = _site_index(self.model, run.sample_sites, site)
        texts: list[str] = []
        t0 = time.perf_counter()
        for b in range(0, len(example), s.batch_size):
            z = torch.from_numpy(z_all[b : b + s.batch_size]).to(self.device)  # (B, d)
            site_idx = torch.full((len(z),), index, device=self.device)  # (B,)
            with torch.no_grad():
                ids = self.method.generate(
                    self.model, self.backbone, z, site_idx, streams, s, eos
                )  # (B, <= max_new_tokens)
            texts += decode(self.tokenizer, ids, eos)
            if progress is not None:
                progress.update(len(z))
        seconds = time.perf_counter() - t0
        reader = SiteReader(self.target, self.target_tok, [site], render=self.render)
        dist = measure(reader, texts, z_all, site, run.extract.batch_size)
        df = pl.DataFrame(
            {
                "site": [site] * len(texts),
                "example_id": example.astype(np.int64),
                "sample_idx": np.tile(np.arange(per), last - first).astype(np.int64),
                "text": texts,
                "distance": dist,
                "accepted": np.nan_to_num(dist, nan=np.inf) < run.kernel.epsilon,
            }
        )
        part = layout.sample_part(out, site, block)
        part.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(df, part)
        info = {"site": site, "block": block, "samples": len(texts), "seconds": round(seconds, 3)}
        shards.mark_done(out, _unit_id(site, block), info)
        return info


def _unit_id(site: str, block: int) -> str:
    return f"{site}-{block:05d}"


def _todo(ctx: StageContext) -> list[tuple[str, int]]:
    return [u for u in units(ctx.run) if not shards.is_done(ctx.out, _unit_id(*u))]


def _run_all(sampler: Sampler, todo: list[tuple[str, int]], label: str) -> None:
    from inversescope.core.progress import Progress  # deferred with torch

    s = sampler.run.sample
    n = sum(min(s.block_examples, s.n_examples - b * s.block_examples) for _, b in todo)
    progress = Progress(label, n * s.samples_per_example, "samples")
    for site, block in todo:
        sampler.run_unit(site, block, progress)


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
    todo = [(site, block) for site, block in shard["units"]]
    todo = [u for u in todo if not shards.is_done(ctx.out, _unit_id(*u))]
    if todo:
        _run_all(Sampler(ctx), todo, f"sample[{shard['id']}]")
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
        _run_all(Sampler(ctx), todo, "sample")
    return finish(ctx)


def finish(ctx: StageContext) -> dict[str, Any]:
    """Check every unit's marker, then the manifest's metrics (the parts in reading order)."""
    all_units = units(ctx.run)
    left = [u for u in all_units if not shards.is_done(ctx.out, _unit_id(*u))]
    if left:
        raise RuntimeError(f"sample: {len(left)} (site, block) units are not done, e.g. {left[0]}")
    parts = [layout.sample_part_name(site, block) for site, block in all_units]
    table = layout.read_sample_parts(ctx.out, parts)
    per_site = table.group_by("site").agg(refusal=1 - pl.col("accepted").mean()).sort("site")
    refusal = dict(zip(per_site["site"], per_site["refusal"], strict=True))
    markers = shards.read_markers(ctx.out)
    seconds = sum(m["seconds"] for m in markers.values())
    return {
        "method": ctx.run.controls.method,
        "parts": parts,
        "n_samples": table.height,
        "refusal_rate_mean": float(np.mean(list(refusal.values()))),
        "refusal_rate_worst_site": max(refusal.items(), key=lambda kv: kv[1]),
        "refusal_rate_per_site": refusal,
        "samples_per_second": table.height / seconds if seconds else None,
    }


def _site_index(model, sites: list[str], site: str) -> int:
    """The site's row in the trained model's own site list (the checkpoint's, not the run's)."""
    own = getattr(model, "sites", None)
    if own is None:  # nothing trained: the index is unused
        return sites.index(site)
    if site not in own:
        raise ValueError(f"site {site!r} was not trained in the controls checkpoint: {own}")
    return own.index(site)
