"""Stage ``sample``: for the first ``n_examples`` test prompts and each site, ``k`` samples
conditioned on that prompt's activation z_hat, decoded to text and measured with the target
exactly as stage ``extract`` measures (``tokenizer(text)``, last token); cosine distance to z_hat;
``accepted = distance < ε``. One Parquet file per site under ``samples/``, each written
atomically, so a killed run resumes at the first site without a file.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch

from inversescope.flows.stage_backbone import load_backbone
from inversescope.flows.stage_controls import load_controls
from inversescope.flows.stage_target import load_target, target_renderer
from inversescope.storage.activations import ActivationStore
from inversescope.storage.artifacts import Artifact
from inversescope.storage.tables import write_parquet_atomic

if TYPE_CHECKING:
    from inversescope.flows.config import RunConfig

log = logging.getLogger(__name__)

NAME = "sample"
INPUTS: tuple[str, ...] = ("extract", "target", "backbone", "controls")
RESUMABLE = True
SAMPLES = "samples"


def config_of(run: RunConfig) -> dict[str, Any]:
    cfg = run.sample.model_dump(mode="json", exclude={"sites", "iv_noise_scale"})
    if run.sample.method == "inversionview":
        scale = run.sample.iv_noise_scale
        cfg["iv_noise_scale"] = run.kernel.epsilon if scale is None else scale
    return {
        "seed": run.seed,
        "kernel": run.kernel.model_dump(mode="json"),
        **cfg,
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


class Sampler:
    """Draws samples for (z_hat, site) conditions with the configured method."""

    def __init__(self, run: RunConfig, inputs: dict[str, Artifact], device: str, d_site: int):
        self.run = run
        self.method = run.sample.method
        self.backbone, self.tokenizer = load_backbone(inputs["backbone"], device)
        self.eos = self.tokenizer.eos_token_id
        self.model = (
            None
            if self.method == "prior"
            else load_controls(run, inputs["controls"], self.backbone, d_site)
        )
        self.d_site = d_site
        self.device = device

    def start_site(self, site: str) -> None:
        """Fresh random streams, seeded by (seed, site): a site's samples do not depend on which
        sites ran before it, so a resumed stage reproduces an uninterrupted one."""
        from inversescope.core.noise import NoiseSampler

        seed = site_seed(self.run.seed, site)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        k = self.run.kernel  # InversionView's protocol: Gaussian noise of scale ε at sampling
        scale = self.run.sample.iv_noise_scale
        self.iv_noise = NoiseSampler(
            "gaussian",
            self.d_site,
            k.epsilon,
            k.delta,
            scale=k.epsilon if scale is None else scale,
            seed=seed,
        )

    @torch.no_grad()
    def draw(self, z: torch.Tensor, site_idx: torch.Tensor) -> list[str]:
        from inversescope.core.sampling import decode, sample_tokens

        gen = self.gen
        s = self.run.sample
        n = z.shape[0]
        z = z.to(self.backbone.device)
        site_idx = site_idx.to(self.backbone.device)
        if self.method == "inversescope":
            with self.model.conditioned(z, site_idx):
                ids = sample_tokens(
                    self.backbone, n, self.eos, s.max_new_tokens, s.temperature, gen
                )
        elif self.method == "inversionview":
            noisy = z + self.iv_noise(z)
            cache = self.model.prefix(noisy, site_idx)
            ids = sample_tokens(
                self.backbone, n, self.eos, s.max_new_tokens, s.temperature, gen, cache
            )
        else:
            ids = sample_tokens(self.backbone, n, self.eos, s.max_new_tokens, s.temperature, gen)
        return decode(self.tokenizer, ids, self.eos)


def measure(reader, texts: list[str], z_hat: np.ndarray, site: str, batch: int) -> np.ndarray:
    """Cosine distance of each text's own activation at ``site`` to its z_hat row (NaN when the
    text is empty: it has no last token)."""
    out = np.full(len(texts), np.nan)
    idx = [i for i, t in enumerate(texts) if t]
    for b in range(0, len(idx), batch):
        rows = idx[b : b + batch]
        acts = reader.read([texts[i] for i in rows])[site].numpy()
        out[rows] = cosine_distance(acts, z_hat[rows])
    return out


def build(run: RunConfig, inputs: dict[str, Artifact], out: Path) -> dict[str, Any]:
    from inversescope.core.extract import SiteReader
    from inversescope.core.models import pick_device, pick_dtype
    from inversescope.core.progress import Progress

    s, eps = run.sample, run.kernel.epsilon
    device = pick_device(run.device)
    store = ActivationStore(inputs["extract"].path)
    sites = run.sample_sites
    d_site = int(store.array("test", sites[0]).shape[1])
    sampler = Sampler(run, inputs, device, d_site)
    target, target_tok = load_target(inputs["target"], device, pick_dtype(run.dtype, device))
    render = target_renderer(run, inputs["target"], target_tok)
    (out / SAMPLES).mkdir(exist_ok=True)
    todo = [site for site in sites if not (out / SAMPLES / f"{site}.parquet").exists()]
    if len(todo) < len(sites):
        log.info(
            "sample: resuming, %d of %d sites already done", len(sites) - len(todo), len(sites)
        )
    progress = Progress(f"sample[{s.method}]", len(todo) * s.n_examples * s.k, "samples")
    gen_seconds, n_generated = 0.0, 0
    for site in todo:
        site_i = sites.index(site)
        z_ref = store.read("test", site, 0, s.n_examples)  # (n_examples, d)
        example = np.repeat(np.arange(s.n_examples), s.k)
        z_all = z_ref[example]  # (n_examples * k, d)
        sampler.start_site(site)
        texts: list[str] = []
        for b in range(0, len(example), s.batch_size):
            z = torch.from_numpy(z_all[b : b + s.batch_size])
            t0 = time.perf_counter()
            texts += sampler.draw(z, torch.full((len(z),), site_i))
            gen_seconds += time.perf_counter() - t0
            n_generated += len(z)
            progress.update(len(z))
        reader = SiteReader(target, target_tok, [site], render=render)
        dist = measure(reader, texts, z_all, site, run.extract.batch_size)
        df = pl.DataFrame(
            {
                "site": [site] * len(texts),
                "example_id": example.astype(np.int64),
                "sample_idx": np.tile(np.arange(s.k), s.n_examples).astype(np.int64),
                "text": texts,
                "distance": dist,
                "accepted": np.nan_to_num(dist, nan=np.inf) < eps,
            }
        )
        write_parquet_atomic(df, out / SAMPLES / f"{site}.parquet")
        log.info("sample[%s]: %s refusal rate %.3f", s.method, site, 1 - df["accepted"].mean())
    table = read_samples(out)
    per_site = table.group_by("site").agg(refusal=1 - pl.col("accepted").mean()).sort("site")
    refusal = dict(zip(per_site["site"], per_site["refusal"], strict=True))
    return {
        "method": s.method,
        "n_samples": table.height,
        "refusal_rate_mean": float(np.mean(list(refusal.values()))),
        "refusal_rate_worst_site": max(refusal.items(), key=lambda kv: kv[1]),
        "refusal_rate_per_site": refusal,
        "samples_per_second": n_generated / gen_seconds if gen_seconds else None,
    }


def read_samples(artifact: Artifact | Path) -> pl.DataFrame:
    root = artifact.path if isinstance(artifact, Artifact) else Path(artifact)
    return pl.read_parquet(root / SAMPLES / "*.parquet")
