"""Sampling methods as objects with one interface: each owns its config, the model it trains,
its trainable state, its checkpoint and how it draws samples.

- ``inversescope``: site encoders + control layers over the backbone, trained with noise;
- ``inversionview``: the baseline decoder (one extra key/value position per layer), trained
  without noise, sampled with Gaussian noise of scale ε added to z_hat;
- ``prior``: the backbone alone (nothing trains).

Choosing a method is one lookup: ``method_for(controls_config)``. A checkpoint describes itself
(``{method, config, sites, d_site, state}``), so ``from_checkpoint`` rebuilds the model without
the current run's site list.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from inversescope.core.config import ControlsConfig, KernelConfig, SampleConfig
from inversescope.core.generator import ConditionalGenerator
from inversescope.core.inversionview import InversionViewDecoder
from inversescope.core.noise import NoiseSampler
from inversescope.core.sampling import sample_tokens


@dataclass
class SiteStreams:
    """The random streams of one site's sampling, seeded by (seed, site), so a site's samples do
    not depend on which sites ran before it."""

    gen: torch.Generator
    noise: NoiseSampler | None = None


class SamplingMethod(ABC):
    name: ClassVar[str]
    trains: ClassVar[bool] = True

    def __init__(self, config: ControlsConfig):
        self.config = config

    # --- training (what of the config each part reads, for the cache keys:
    # ``ControlsConfig.training_key`` and ``sampling_key``, which need no torch) --------------
    def build(self, backbone: PreTrainedModel, sites: list[str], d_site: int) -> nn.Module | None:
        """The model that trains on top of ``backbone`` (None: nothing trains)."""
        return None

    def training_noise(self, kernel: KernelConfig, d_site: int, seed: int) -> NoiseSampler | None:
        """The noise r of training pairs (x_hat, z_hat + r), or None."""
        return None

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights a checkpoint keeps."""
        return dict(model.state_dict())

    # --- sampling -------------------------------------------------------------------------
    def streams(self, seed: int, kernel: KernelConfig, d_site: int, device: str) -> SiteStreams:
        return SiteStreams(torch.Generator(device=device).manual_seed(seed))

    @abstractmethod
    def generate(
        self,
        model: nn.Module | None,
        backbone: PreTrainedModel,
        z: torch.Tensor,
        site_idx: torch.Tensor,
        streams: SiteStreams,
        settings: SampleConfig,
        eos_id: int,
    ) -> torch.Tensor:
        """Token ids (B, <= max_new_tokens) for conditions z (B, d) at sites ``site_idx`` (B,)."""


class InverseScopeMethod(SamplingMethod):
    name = "inversescope"

    def build(self, backbone, sites, d_site):
        g = self.config.generator
        return ConditionalGenerator(
            backbone,
            sites,
            d_site,
            g.n_heads,
            g.d_head,
            backbone_mode=g.backbone_mode,
            lora_rank=g.lora_rank,
            value_form=g.value_form,
            control_blocks=g.control_blocks,
            log_norm=g.log_norm,
            backbone_lr_ratio=g.backbone_lr_ratio,
        )

    def training_noise(self, kernel, d_site, seed):
        noise = self.config.generator.noise
        if noise.family == "none":
            return None
        return NoiseSampler(
            noise.family, d_site, kernel.epsilon, kernel.delta, kernel.shape, noise.scale, seed
        )

    def trainable_state(self, model):
        return model.trainable_state()

    def generate(self, model, backbone, z, site_idx, streams, settings, eos_id):
        with model.conditioned(z, site_idx):
            return sample_tokens(
                backbone, len(z), eos_id, settings.max_new_tokens, settings.temperature, streams.gen
            )


class InversionViewMethod(SamplingMethod):
    name = "inversionview"

    def build(self, backbone, sites, d_site):
        return InversionViewDecoder(backbone, sites, d_site, self.config.inversionview.hidden)

    def streams(self, seed, kernel, d_site, device):
        noise = NoiseSampler(
            "gaussian",
            d_site,
            kernel.epsilon,
            kernel.delta,
            scale=self.config.inversionview.noise_scale(kernel),
            seed=seed,
        )
        return SiteStreams(torch.Generator(device=device).manual_seed(seed), noise)

    def generate(self, model, backbone, z, site_idx, streams, settings, eos_id):
        cache = model.prefix(z + streams.noise(z), site_idx)
        return sample_tokens(
            backbone,
            len(z),
            eos_id,
            settings.max_new_tokens,
            settings.temperature,
            streams.gen,
            cache,
        )


class PriorMethod(SamplingMethod):
    name = "prior"
    trains = False

    def generate(self, model, backbone, z, site_idx, streams, settings, eos_id):
        return sample_tokens(
            backbone, len(z), eos_id, settings.max_new_tokens, settings.temperature, streams.gen
        )


METHODS: dict[str, type[SamplingMethod]] = {
    m.name: m for m in (InverseScopeMethod, InversionViewMethod, PriorMethod)
}


def method_for(config: ControlsConfig) -> SamplingMethod:
    """The sampling method a controls config names."""
    return METHODS[config.method](config)


def checkpoint(
    method: SamplingMethod, model: nn.Module | None, sites: list[str], d_site: int
) -> dict[str, Any]:
    """A self-describing checkpoint: the weights plus everything that rebuilds their model."""
    return {
        "method": method.name,
        "config": method.config.model_dump(mode="json"),
        "sites": list(sites),
        "d_site": d_site,
        "state": None if model is None else method.trainable_state(model),
    }


def from_checkpoint(
    ckpt: dict[str, Any], backbone: PreTrainedModel
) -> tuple[SamplingMethod, nn.Module | None]:
    """(method, model on the backbone's device in eval mode) rebuilt from a checkpoint alone."""
    method = method_for(ControlsConfig.model_validate(ckpt["config"]))
    model = method.build(backbone, ckpt["sites"], ckpt["d_site"])
    if model is None:
        return method, None
    missing, unexpected = model.load_state_dict(ckpt["state"], strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]  # the backbone loads apart
    if unexpected or missing:
        raise ValueError(
            f"checkpoint of method {method.name} does not fit its model: unexpected "
            f"{sorted(unexpected)[:5]}, missing {sorted(missing)[:5]}"
        )
    return method, model.to(next(backbone.parameters()).device).eval()
