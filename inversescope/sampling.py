"""Sampling a run's references: the trained generator and the target loaded from a run's
artifacts (``load_inverter``, for stage ``sample`` and ``Run.generator`` alike), and the
samples of one (site, group) unit, each group with its own random stream seeded by (seed,
site, group), so samples depend neither on how units are spread over shards nor on the order
of resumption.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from inversescope.storage import layout
from inversescope.tasks import task_renderer

if TYPE_CHECKING:
    from inversescope.config import RunConfig
    from inversescope.core.inversion import Inverter
    from inversescope.storage.artifacts import Artifact


def group_seed(seed: int, site: str, group: int) -> int:
    """The seed of one (site, group) unit: its samples depend on nothing else."""
    key = f"{seed}/{site}/{group}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def units(run: RunConfig) -> list[tuple[str, int]]:
    """Every (site, group) unit of a run, in site order then group order."""
    n_groups = -(-run.sample.n_examples // run.sample.group_size)
    return [(site, group) for site in run.sample_sites for group in range(n_groups)]


def load_inverter(
    run: RunConfig, backbone: Artifact, controls: Artifact, target: Artifact, device=None
) -> Inverter:
    """The fine-tuned backbone, the trained controls on it and the target, loaded once."""
    # torch deferred: computing keys must not import it
    from inversescope.core.inversion import Inverter
    from inversescope.core.models import pick_device, pick_dtype

    dev = pick_device(device or run.device)
    backbone_model, tokenizer = layout.load_backbone(backbone, dev)
    method, model = layout.load_controls(controls, backbone_model)
    target_model, target_tok = layout.load_target(target, dev, pick_dtype(run.dtype, dev))
    render = task_renderer(run.task, target_tok, layout.target_prefix(target))
    return Inverter(
        method, model, backbone_model, tokenizer, target_model, target_tok, render,
        run.extract.batch_size,
    )  # fmt: skip


def sample_group(
    inverter: Inverter, run: RunConfig, site: str, group: int, z_ref: np.ndarray, on_batch=None
) -> pl.DataFrame:
    """The samples of one (site, group) unit: ``samples_per_example`` for each reference of the
    group, whose activations are ``z_ref`` (references, d); with their distances."""
    s = run.sample
    per, first = s.samples_per_example, group * s.group_size
    example = np.repeat(np.arange(first, first + len(z_ref)), per)  # (examples * per,)
    texts, dist = inverter.sample(
        z_ref[example - first], site, s, run.kernel, group_seed(run.seed, site, group), on_batch
    )
    return pl.DataFrame(
        {
            "site": [site] * len(texts),
            "example_id": example.astype(np.int64),
            "sample_idx": np.tile(np.arange(per), len(z_ref)).astype(np.int64),
            "text": texts,
            "distance": dist,
        }
    )
