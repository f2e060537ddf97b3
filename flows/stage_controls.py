"""Stage ``controls``: train what conditions the backbone on activations, as the sampling method
(``controls.method``, see ``inversescope.core.methods``) defines it; a method that trains nothing
(``prior``) commits a checkpoint without weights. The training pairs stream from the Zarr store
one row chunk at a time (``core.pairs``); the checkpoint describes itself (method, config,
sites, d_site, weights), so loading it needs nothing of the current run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from inversescope.storage import layout
from inversescope.storage.activations import ActivationStore

if TYPE_CHECKING:
    from inversescope.config import RunConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "controls"
INPUTS: tuple[str, ...] = ("prior", "extract", "backbone")
RESUMABLE = True  # training continues from its last checkpoint
SEEDED = True  # initialises and trains a model from the global generators


def config_of(run: RunConfig) -> dict[str, Any]:
    controls = run.controls
    if controls.method_config is None:  # nothing trains
        return {"method": controls.method}
    return {
        "method": controls.method,
        "seed": run.seed,
        "sites": run.sample_sites,
        "train": controls.train.key(),
        **controls.training_key(run.kernel),
        **controls.pairs_key(),
    }


def _batches(
    store: ActivationStore,
    split: str,
    sites,
    texts,
    tokenizer,
    batch_size,
    seed,
    noise,
    sites_per_row=None,
    length_groups=None,
):
    from inversescope.core.pairs import ActivationBatches  # torch: deferred

    return ActivationBatches(
        lambda site, start, stop: store.read(split, site, start, stop),
        store.array(split, sites[0]).shape[0],
        store.array(split, sites[0]).chunks[0],
        sites,
        texts,
        tokenizer,
        batch_size,
        seed,
        noise,
        sites_per_row,
        length_groups,
    )


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
    held = _batches(store, "test", sites, test_texts, tokenizer, schedule.batch_size, 1, None)
    held_out = [next(held) for _ in range(4)]
    result = train_causal_lm(
        model,
        _batches(
            store,
            "train",
            sites,
            train_texts,
            tokenizer,
            schedule.batch_size,
            run.seed,
            noise,
            run.controls.sites_per_row,
            run.controls.length_groups,
        ),
        schedule,
        evaluate=lambda m: {"held_out_loss": mean_loss(m, held_out)},
        stage=f"controls[{method.name}]",
        checkpoint=layout.train_checkpoint(ctx.out),
    )
    layout.drop_train_checkpoint(ctx.out)
    layout.save_controls(ctx.out, checkpoint(method, model, sites, d_site))
    return {
        "method": method.name,
        "trained": True,
        "steps": result.steps,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "held_out_loss": result.evals[-1][1]["held_out_loss"],
        "evals": result.evals,
        "precision": result.precision,
        "loss_curve": result.losses[:: max(1, len(result.losses) // 50)],
    }
