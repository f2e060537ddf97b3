"""Reading sites at one token position with nnsight, one trace per batch.

For each layer that has a requested site we read the attention output projection's input
(``heads_in``: the concatenated head outputs, ``(B, H*d_head)``) and/or its output at the read
position. Head ``h``'s term in the residual basis is ``heads_in[:, h] @ W_O[h]`` (no bias), as
TransformerLens's
``hook_result``; ``L{l}.attn`` is the projection's output. The forward pass stops after the deepest
layer needed.
"""

from __future__ import annotations

from collections.abc import Callable

import nnsight
import torch
from nnsight import NNsight
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from inversescope.core.architectures import architecture_of
from inversescope.core.sites import Site, check_sites


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token under right padding.  # (B,)"""
    return attention_mask.sum(dim=1) - 1


class SiteReader:
    """Reads a fixed list of sites of one model at the last token of each prompt."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sites: list[str],
        render: Callable[[str], str] | None = None,
    ):
        self.arch = architecture_of(model.config)
        self.dims = self.arch.dims(model.config)
        self.sites: list[Site] = check_sites(sites, self.dims)
        self.model = model
        self.tokenizer = tokenizer
        self.render = render
        self.envoy = NNsight(model)
        self.layers = sorted({s.layer for s in self.sites})
        self.need_heads = {s.layer for s in self.sites if s.is_head}
        self.need_out = {s.layer for s in self.sites if not s.is_head}
        n_head = self.dims.n_head
        # (H, d_head, d_model) head slices of each needed projection weight.
        self.w_heads = {
            layer: self.arch.weight_in_out(self.arch.o_proj(model, layer))
            .detach()
            .reshape(n_head, -1, self.dims.d_model)
            for layer in self.need_heads
        }

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``tokenizer(render(text))`` as the tokenizer encodes by default, right-padded into a
        batch."""
        if self.render is not None:
            texts = [self.render(t) for t in texts]
        self.tokenizer.padding_side = "right"
        enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        return {
            k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")
        }

    @torch.no_grad()
    def read(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Activations ``{site name: (B, d_model) float32 tensor on CPU}`` for a batch of texts."""
        enc = self.encode(texts)
        rows = torch.arange(enc["input_ids"].shape[0], device=self.device)
        last = last_positions(enc["attention_mask"])
        heads_saved, out_saved = self._trace(enc, rows, last)
        result: dict[str, torch.Tensor] = {}
        for site in self.sites:
            if site.is_head:
                # (B, H * dh) -> (B, H, dh)
                heads = heads_saved[site.layer].reshape(len(rows), self.dims.n_head, -1)
                # (B, dh) @ (dh, d_model) -> (B, d_model)
                term = torch.einsum(
                    "bd,dm->bm", heads[:, site.head], self.w_heads[site.layer][site.head]
                )
                result[site.name] = term.float().cpu()  # (B, d_model)
            else:
                result[site.name] = out_saved[site.layer].float().cpu()  # (B, d_model)
        return result

    def _trace(self, enc, rows, last):
        envoy, arch = self.envoy, self.arch
        layers, need_heads, need_out = self.layers, self.need_heads, self.need_out
        with envoy.trace(**enc) as tracer:
            heads_saved = nnsight.save({})  # layer -> (B, H * dh) at the read position
            out_saved = nnsight.save({})  # layer -> (B, d_model) at the read position
            for layer in layers:
                proj = arch.o_proj(envoy, layer)
                if layer in need_heads:
                    heads_saved[layer] = proj.input[rows, last]
                if layer in need_out:
                    out_saved[layer] = proj.output[rows, last]
            tracer.stop()
        return heads_saved, out_saved
