"""Stage ``sample``: for the first ``n_examples`` test prompts and each site,
``samples_per_example`` samples conditioned on that prompt's activation z_hat, drawn with the
method the controls checkpoint holds, decoded to text and measured with the target exactly as
stage ``extract`` measures (``tokenizer(text)``, last token); cosine distance to z_hat;
``accepted = distance < ε``. One Parquet part per site, each written atomically, so a killed run
resumes at the first site without a part; the manifest lists the parts.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from inversescope.storage import layout
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


def build(ctx: StageContext) -> dict[str, Any]:
    # torch deferred: computing keys must not import it
    import torch

    from inversescope.core.extract import SiteReader
    from inversescope.core.models import pick_device, pick_dtype
    from inversescope.core.progress import Progress
    from inversescope.core.sampling import decode

    run, out, target = ctx.run, ctx.out, ctx.inputs["target"]
    s, eps = run.sample, run.kernel.epsilon
    per = s.samples_per_example
    device = pick_device(run.device)
    store = ActivationStore(ctx.inputs["extract"].path)
    sites = run.sample_sites
    d_site = int(store.array("test", sites[0]).shape[1])
    backbone, tokenizer = layout.load_backbone(ctx.inputs["backbone"], device)
    method, model = layout.load_controls(ctx.inputs["controls"], backbone)
    eos = tokenizer.eos_token_id
    target_model, target_tok = layout.load_target(target, device, pick_dtype(run.dtype, device))
    render = task_renderer(run.task, target_tok, layout.target_prefix(target))
    (out / layout.SAMPLES_DIR).mkdir(exist_ok=True)
    todo = [site for site in sites if not layout.sample_part(out, site).exists()]
    if len(todo) < len(sites):
        log.info(
            "sample: resuming, %d of %d sites already done", len(sites) - len(todo), len(sites)
        )
    progress = Progress(f"sample[{method.name}]", len(todo) * s.n_examples * per, "samples")
    gen_seconds, n_generated = 0.0, 0
    for site in todo:
        z_ref = store.read("test", site, 0, s.n_examples)  # (n_examples, d)
        example = np.repeat(np.arange(s.n_examples), per)  # (n_examples * per,)
        z_all = z_ref[example]  # (n_examples * per, d)
        streams = method.streams(site_seed(run.seed, site), run.kernel, d_site, device)
        site_i = torch.full((s.batch_size,), _site_index(model, sites, site), device=device)
        texts: list[str] = []
        for b in range(0, len(example), s.batch_size):
            z = torch.from_numpy(z_all[b : b + s.batch_size]).to(device)  # (B, d)
            t0 = time.perf_counter()
            with torch.no_grad():
                ids = method.generate(model, backbone, z, site_i[: len(z)], streams, s, eos)
            texts += decode(tokenizer, ids, eos)
            gen_seconds += time.perf_counter() - t0
            n_generated += len(z)
            progress.update(len(z))
        reader = SiteReader(target_model, target_tok, [site], render=render)
        dist = measure(reader, texts, z_all, site, run.extract.batch_size)
        df = pl.DataFrame(
            {
                "site": [site] * len(texts),
                "example_id": example.astype(np.int64),
                "sample_idx": np.tile(np.arange(per), s.n_examples).astype(np.int64),
                "text": texts,
                "distance": dist,
                "accepted": np.nan_to_num(dist, nan=np.inf) < eps,
            }
        )
        write_parquet_atomic(df, layout.sample_part(out, site))
        log.info("sample[%s]: %s refusal rate %.3f", method.name, site, 1 - df["accepted"].mean())
    parts = [layout.sample_part_name(site) for site in sites]
    table = layout.read_sample_parts(out, parts)
    per_site = table.group_by("site").agg(refusal=1 - pl.col("accepted").mean()).sort("site")
    refusal = dict(zip(per_site["site"], per_site["refusal"], strict=True))
    return {
        "method": method.name,
        "parts": parts,
        "n_samples": table.height,
        "refusal_rate_mean": float(np.mean(list(refusal.values()))),
        "refusal_rate_worst_site": max(refusal.items(), key=lambda kv: kv[1]),
        "refusal_rate_per_site": refusal,
        "samples_per_second": n_generated / gen_seconds if gen_seconds else None,
    }


def _site_index(model, sites: list[str], site: str) -> int:
    """The site's row in the trained model's own site list (the checkpoint's, not the run's)."""
    own = getattr(model, "sites", None)
    if own is None:  # nothing trained: the index is unused
        return sites.index(site)
    if site not in own:
        raise ValueError(f"site {site!r} was not trained in the controls checkpoint: {own}")
    return own.index(site)
