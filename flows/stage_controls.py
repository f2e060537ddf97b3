"""Stage ``controls``: train what conditions the backbone on activations, as the sampling method
(``controls.method``, see ``inversescope.core.methods``) defines it; a method that trains nothing
(``prior``) commits a checkpoint without weights. Activations stream from the Zarr store one row
chunk at a time; every batch mixes sites. The checkpoint describes itself (method, config,
sites, d_site, weights), so loading it needs nothing of the current run.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from inversescope.storage import layout
from inversescope.storage.activations import ActivationStore

if TYPE_CHECKING:
    import torch

    from inversescope.flows.config import RunConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "controls"
INPUTS: tuple[str, ...] = ("prior", "extract", "backbone")
RESUMABLE = False
SEEDED = True  # initialises and trains a model from the global generators


def config_of(run: RunConfig) -> dict[str, Any]:
    # core.methods imports torch: deferred, and only the method's own config enters the key
    from inversescope.core.methods import method_for

    method = method_for(run.controls)
    if not method.trains:
        return {"method": method.name}
    return {
        "method": method.name,
        "seed": run.seed,
        "sites": run.sample_sites,
        "train": run.controls.train.model_dump(mode="json"),
        **method.training_config(run.kernel),
    }


def activation_batches(
    store: ActivationStore,
    split: str,
    sites: list[str],
    texts: list[str],
    tokenizer,
    batch_size: int,
    seed: int,
    noise=None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of (tokens of x_hat, z_hat + r, site index), sites mixed in each batch.
    Reads one row chunk of every site at a time, in shuffled chunk order."""
    # torch deferred: computing keys must not import it
    import torch

    from inversescope.core.lm_training import lm_batch

    rng = random.Random(seed)
    n_rows = store.array(split, sites[0]).shape[0]
    step = store.array(split, sites[0]).chunks[0]
    starts = list(range(0, n_rows, step))
    while True:
        rng.shuffle(starts)
        for start in starts:
            # (S, R, d): R rows of the chunk at every site
            block = np.stack([store.read(split, s, start, start + step) for s in sites])
            pairs = [(r, s) for r in range(block.shape[1]) for s in range(len(sites))]
            rng.shuffle(pairs)
            for i in range(0, len(pairs) - batch_size + 1, batch_size):
                chunk = pairs[i : i + batch_size]
                rows = [r for r, _ in chunk]
                site_idx = torch.tensor([s for _, s in chunk])  # (B,)
                z = torch.from_numpy(block[site_idx.numpy(), rows])  # (B, d)
                if noise is not None:
                    z = z + noise(z)
                batch = lm_batch(tokenizer, [texts[start + r] for r in rows])
                yield {**batch, "z": z, "site_idx": site_idx}


def build(ctx: StageContext) -> dict[str, Any]:
    # torch deferred: computing keys must not import it
    from inversescope.core.lm_training import mean_loss, train_causal_lm
    from inversescope.core.methods import checkpoint, method_for
    from inversescope.core.models import pick_device

    run = ctx.run
    method = method_for(run.controls)
    sites = run.sample_sites
    store = ActivationStore(ctx.inputs["extract"].path)
    d_site = int(store.array("train", sites[0]).shape[1])
    if not method.trains:
        layout.save_controls(ctx.out, checkpoint(method, None, sites, d_site))
        return {"method": method.name, "trained": False}
    backbone, tokenizer = layout.load_backbone(ctx.inputs["backbone"], pick_device(run.device))
    model = method.build(backbone, sites, d_site).to(backbone.device)
    noise = method.training_noise(run.kernel, d_site, run.seed)
    prior = ctx.inputs["prior"]
    train_texts = layout.read_split(prior, "train")["text"].to_list()
    test_texts = layout.read_split(prior, "test")["text"].to_list()
    schedule = run.controls.train
    held = activation_batches(store, "test", sites, test_texts, tokenizer, schedule.batch_size, 1)
    held_out = [next(held) for _ in range(4)]
    result = train_causal_lm(
        model,
        activation_batches(
            store, "train", sites, train_texts, tokenizer, schedule.batch_size, run.seed, noise
        ),
        schedule,
        evaluate=lambda m: {"held_out_loss": mean_loss(m, held_out)},
        stage=f"controls[{method.name}]",
    )
    layout.save_controls(ctx.out, checkpoint(method, model, sites, d_site))
    return {
        "method": method.name,
        "trained": True,
        "steps": result.steps,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "held_out_loss": result.evals[-1][1]["held_out_loss"],
        "evals": result.evals,
        "loss_curve": result.losses[:: max(1, len(result.losses) // 50)],
    }
