"""The InversionView baseline decoder (the paper's appendix C.1.4), as InversionView builds it.

The activation's direction (``core.conditioning``: z / ||z|| * sqrt(d), as the generator reads
it, so the comparison is fair), plus a learned per-site embedding, goes through a small
residual MLP; its
output is projected to one extra key/value position for every self-attention layer of the
decoder, prepended to the decoder's cache. The whole decoder trains. No training noise; at
sampling time Gaussian noise of scale ε is added to z (their protocol).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from inversescope.core.architectures import architecture_of
from inversescope.core.conditioning import direction


class ResidualMLP(nn.Module):
    def __init__(self, d: int, hidden: int, n_blocks: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
            for _ in range(n_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


class InversionViewDecoder(nn.Module):
    """A decoder attending, in every layer, to one extra position made from (z, site)."""

    def __init__(self, backbone: PreTrainedModel, sites: list[str], d_site: int, hidden: int):
        super().__init__()
        cfg = backbone.config
        self.backbone = backbone
        self.sites = list(sites)
        self.n_layer = cfg.num_hidden_layers
        arch = architecture_of(cfg)
        self.n_kv, self.head_dim = arch.kv_heads(cfg), arch.head_dim(cfg)
        self.site_embedding = nn.Embedding(len(sites), d_site)
        self.mlp = ResidualMLP(d_site, hidden)
        self.to_kv = nn.Linear(d_site, self.n_layer * 2 * self.n_kv * self.head_dim)
        backbone.requires_grad_(True)

    def prefix(self, z: torch.Tensor, site_idx: torch.Tensor) -> DynamicCache:
        """A cache holding one key/value position per layer for each row of z (B, d)."""
        b = z.shape[0]
        # the direction of z at unit RMS, as the generator reads it (core.conditioning): the
        # site embedding (norm about sqrt(d)) no longer drowns a raw z of norm 0.15 to 1
        h = self.mlp(direction(z) + self.site_embedding(site_idx))  # (B, d)
        # (B, L * 2 * n_kv * dh) -> (B, L, key|value, n_kv, one position, dh)
        kv = self.to_kv(h).view(b, self.n_layer, 2, self.n_kv, 1, self.head_dim)
        cache = DynamicCache(config=self.backbone.config)
        for layer in range(self.n_layer):
            cache.update(kv[:, layer, 0], kv[:, layer, 1], layer)  # (B, n_kv, 1, dh) each
        return cache

    def forward(self, input_ids, attention_mask, z, site_idx, labels=None):
        b, t = input_ids.shape
        cache = self.prefix(z, site_idx)
        mask = torch.cat([attention_mask.new_ones(b, 1), attention_mask], dim=1)  # (B, 1+T)
        positions = torch.arange(t, device=input_ids.device).expand(b, t)  # as without prefix
        return self.backbone(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            labels=labels,
            use_cache=True,
        )
