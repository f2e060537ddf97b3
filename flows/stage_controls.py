"""Stage ``controls``: train what conditions the backbone on activations.

``sample.method=inversescope``: site encoders + control layers over the (frozen) backbone, with
training noise; ``inversionview``: the baseline decoder (whole decoder trains, no noise);
``prior``: nothing to train (an empty artifact). Activations stream from the Zarr store one row
chunk at a time; every batch mixes sites.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from inversescope.flows.stage_backbone import load_backbone
from inversescope.flows.stage_prior import read_split
from inversescope.storage.activations import ActivationStore
from inversescope.storage.artifacts import Artifact, write_json_atomic

if TYPE_CHECKING:
    from inversescope.flows.config import RunConfig

log = logging.getLogger(__name__)

NAME = "controls"
INPUTS: tuple[str, ...] = ("prior", "extract", "backbone")
RESUMABLE = False
WEIGHTS = "controls.pt"


def config_of(run: RunConfig) -> dict[str, Any]:
    method = run.sample.method
    if method == "prior":
        return {"method": "prior"}
    cfg = run.controls.model_dump(mode="json")
    if method == "inversionview":  # no training noise, whole decoder trains
        cfg.pop("noise")
        cfg.pop("backbone")
        cfg.pop("n_heads")
        cfg.pop("d_head")
        cfg.pop("lora_rank")
    else:
        cfg.pop("iv_hidden")
    return {
        "method": method,
        "seed": run.seed,
        "sites": run.sample_sites,
        "kernel": run.kernel.model_dump(mode="json"),
        **cfg,
    }


def build_model(run: RunConfig, backbone, d_site: int) -> torch.nn.Module:
    from inversescope.core.generator import ConditionalGenerator
    from inversescope.core.inversionview import InversionViewDecoder

    c = run.controls
    if run.sample.method == "inversionview":
        return InversionViewDecoder(backbone, run.sample_sites, d_site, c.iv_hidden)
    return ConditionalGenerator(
        backbone,
        run.sample_sites,
        d_site,
        c.n_heads,
        c.d_head,
        backbone_mode=c.backbone,
        lora_rank=c.lora_rank,
    )


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
    rng = random.Random(seed)
    eos = tokenizer.eos_token
    n_rows = store.array(split, sites[0]).shape[0]
    step = store.array(split, sites[0]).chunks[0]
    starts = list(range(0, n_rows, step))
    while True:
        rng.shuffle(starts)
        for start in starts:
            block = np.stack([store.read(split, s, start, start + step) for s in sites])  # (S,R,d)
            pairs = [(r, s) for r in range(block.shape[1]) for s in range(len(sites))]
            rng.shuffle(pairs)
            for i in range(0, len(pairs) - batch_size + 1, batch_size):
                chunk = pairs[i : i + batch_size]
                rows = [r for r, _ in chunk]
                site_idx = torch.tensor([s for _, s in chunk])
                z = torch.from_numpy(block[site_idx.numpy(), rows])  # (B, d)
                if noise is not None:
                    z = z + noise(z)
                tokenizer.padding_side = "right"
                enc = tokenizer(
                    [eos + texts[start + r] + eos for r in rows], return_tensors="pt", padding=True
                )
                labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
                yield {
                    "input_ids": enc["input_ids"],
                    "attention_mask": enc["attention_mask"],
                    "labels": labels,
                    "z": z,
                    "site_idx": site_idx,
                }


def build(run: RunConfig, inputs: dict[str, Artifact], out: Path) -> dict[str, Any]:
    from inversescope.core.lm_training import mean_loss, train_causal_lm
    from inversescope.core.models import pick_device
    from inversescope.core.noise import NoiseSampler

    method = run.sample.method
    write_json_atomic(out / "controls.json", config_of(run))
    if method == "prior":
        return {"method": "prior", "trained": False}
    device = pick_device(run.device)
    store = ActivationStore(inputs["extract"].path)
    d_site = int(store.array("train", run.sample_sites[0]).shape[1])
    backbone, tokenizer = load_backbone(inputs["backbone"], device)
    model = build_model(run, backbone, d_site).to(device)
    c = run.controls
    noise = None
    if method == "inversescope" and c.noise.family != "none":
        k = run.kernel
        noise = NoiseSampler(
            c.noise.family, d_site, k.epsilon, k.delta, k.kernel, c.noise.scale, seed=run.seed
        )
    train_texts = read_split(inputs["prior"], "train")["text"].to_list()
    test_texts = read_split(inputs["prior"], "test")["text"].to_list()
    held = activation_batches(
        store, "test", run.sample_sites, test_texts, tokenizer, c.train.batch_size, seed=1
    )
    held_out = [next(held) for _ in range(4)]
    result = train_causal_lm(
        model,
        activation_batches(
            store,
            "train",
            run.sample_sites,
            train_texts,
            tokenizer,
            c.train.batch_size,
            run.seed,
            noise,
        ),
        c.train,
        evaluate=lambda m: {"held_out_loss": mean_loss(m, held_out)},
        stage=f"controls[{method}]",
    )
    state = (
        model.trainable_state()
        if method == "inversescope"
        else {k: v for k, v in model.state_dict().items()}
    )
    torch.save(state, out / WEIGHTS)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "method": method,
        "trained": True,
        "steps": result.steps,
        "trainable_parameters": n_trainable,
        "held_out_loss": result.evals[-1][1]["held_out_loss"],
        "evals": result.evals,
        "loss_curve": result.losses[:: max(1, len(result.losses) // 50)],
    }


def load_controls(run: RunConfig, artifact: Artifact, backbone, d_site: int) -> torch.nn.Module:
    model = build_model(run, backbone, d_site)
    state = torch.load(artifact.path / WEIGHTS, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("backbone.") for k in missing), missing
    return model.to(next(backbone.parameters()).device).eval()
