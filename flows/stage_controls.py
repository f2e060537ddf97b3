"""Stage ``controls``: train what conditions the backbone on activations, as the sampling method
(``controls.method``, see ``inversescope.core.methods``) defines it; a method that trains nothing
(``prior``) commits a checkpoint without weights. Activations stream from the Zarr store one row
chunk at a time; every batch mixes sites. The checkpoint describes itself (method, config,
sites, d_site, weights), so loading it needs nothing of the current run.
"""

from __future__ import annotations

import logging
import random
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
RESUMABLE = True  # training continues from its last checkpoint
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
        "train": run.controls.train.key(),
        **method.training_config(run.kernel),
    }


class ActivationBatches:
    """Endless batches of (tokens of x_hat, z_hat + r, site index), sites mixed in each batch.
    Reads one row chunk of every site at a time, in shuffled chunk order. Its position (the
    generators, the chunk order, the pairs left in the current chunk) is checkpointable, so a
    resumed training sees exactly the batches an uninterrupted one would."""

    def __init__(
        self,
        store: ActivationStore,
        split: str,
        sites: list[str],
        texts: list[str],
        tokenizer,
        batch_size: int,
        seed: int,
        noise=None,
    ):
        self.store, self.split, self.sites, self.texts = store, split, sites, texts
        self.tokenizer, self.batch_size, self.noise = tokenizer, batch_size, noise
        self.rng = random.Random(seed)
        n_rows = store.array(split, sites[0]).shape[0]
        self.step = store.array(split, sites[0]).chunks[0]
        self.starts = list(range(0, n_rows, self.step))
        self.pos = len(self.starts)  # the first call starts an epoch
        self.start = -1  # the chunk now read (-1: none)
        self.pairs: list[tuple[int, int]] = []  # (row in chunk, site index), shuffled
        self.i = 0  # pairs already batched
        self.block: np.ndarray | None = None  # (S, R, d): the chunk's rows at every site

    def __iter__(self) -> ActivationBatches:
        return self

    def _read(self, start: int) -> None:
        self.start = start
        self.block = np.stack(
            [self.store.read(self.split, s, start, start + self.step) for s in self.sites]
        )

    def __next__(self) -> dict[str, torch.Tensor]:
        # torch deferred: computing keys must not import it
        import torch

        from inversescope.core.lm_training import lm_batch

        while self.i + self.batch_size > len(self.pairs):
            if self.pos >= len(self.starts):
                self.rng.shuffle(self.starts)
                self.pos = 0
            self._read(self.starts[self.pos])
            self.pos += 1
            n_rows = self.block.shape[1]  # type: ignore[union-attr]
            self.pairs = [(r, s) for r in range(n_rows) for s in range(len(self.sites))]
            self.rng.shuffle(self.pairs)
            self.i = 0
        assert self.block is not None
        chunk = self.pairs[self.i : self.i + self.batch_size]
        self.i += self.batch_size
        rows = [r for r, _ in chunk]
        site_idx = torch.tensor([s for _, s in chunk])  # (B,)
        z = torch.from_numpy(self.block[site_idx.numpy(), rows])  # (B, d)
        if self.noise is not None:
            z = z + self.noise(z)
        batch = lm_batch(self.tokenizer, [self.texts[self.start + r] for r in rows])
        return {**batch, "z": z, "site_idx": site_idx}

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.getstate(),
            "starts": list(self.starts),
            "pos": self.pos,
            "start": self.start,
            "pairs": list(self.pairs),
            "i": self.i,
            "noise": self.noise.state_dict() if self.noise is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.starts, self.pos = list(state["starts"]), state["pos"]
        self.pairs, self.i = [tuple(p) for p in state["pairs"]], state["i"]
        if state["start"] >= 0:
            self._read(state["start"])
        if self.noise is not None:
            self.noise.load_state_dict(state["noise"])


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
    held = ActivationBatches(store, "test", sites, test_texts, tokenizer, schedule.batch_size, 1)
    held_out = [next(held) for _ in range(4)]
    result = train_causal_lm(
        model,
        ActivationBatches(
            store, "train", sites, train_texts, tokenizer, schedule.batch_size, run.seed, noise
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
        "loss_curve": result.losses[:: max(1, len(result.losses) // 50)],
    }
