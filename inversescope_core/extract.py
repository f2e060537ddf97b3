"""Reading sites at one token position with nnsight, one trace per batch.

For each layer that has a requested site we read the attention output projection's input
``z`` (the concatenated head outputs, ``(B, H*d_head)``) and/or its output at the read position.
Head ``h``'s term in the residual basis is ``z[:, h] @ W_O[h]`` (no bias), as TransformerLens's
``hook_result``; ``L{l}.attn`` is the projection's output. The forward pass stops after the deepest
layer needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import nnsight
import torch
from nnsight import NNsight
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from inversescope.core.models import dims_of
from inversescope.core.sites import Site, check_sites


@dataclass(frozen=True)
class Architecture:
    """Where the attention output projection of layer ``l`` lives, and its weight as (in, out)."""

    o_proj: Callable[[object, int], object]  # (model or envoy, layer) -> module or envoy
    weight_in_out: Callable[[torch.nn.Module], torch.Tensor]


def _decoder_o_proj(root, layer: int):
    return root.model.layers[layer].self_attn.o_proj


ARCHITECTURES: dict[str, Architecture] = {
    # GPT-2's Conv1D stores its weight as (in, out).
    "gpt2": Architecture(
        o_proj=lambda root, layer: root.transformer.h[layer].attn.c_proj,
        weight_in_out=lambda module: module.weight,
    ),
    # Llama and Gemma-2: nn.Linear stores (out, in); Gemma-2's heads may be wider than
    # hidden_size / n_heads, so o_proj maps n_heads * head_dim -> hidden_size.
    "llama": Architecture(o_proj=_decoder_o_proj, weight_in_out=lambda module: module.weight.T),
    "gemma2": Architecture(o_proj=_decoder_o_proj, weight_in_out=lambda module: module.weight.T),
}


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
        self.dims = dims_of(model.config)
        self.sites: list[Site] = check_sites(sites, self.dims)
        self.arch = ARCHITECTURES[self.dims.architecture]
        self.model = model
        self.tokenizer = tokenizer
        self.render = render
        self.envoy = NNsight(model)
        self.layers = sorted({s.layer for s in self.sites})
        self.need_z = {s.layer for s in self.sites if s.is_head}
        self.need_out = {s.layer for s in self.sites if not s.is_head}
        n_head = self.dims.n_head
        # (H, d_head, d_model) head slices of each needed projection weight.
        self.w_heads = {
            layer: self.arch.weight_in_out(self.arch.o_proj(model, layer))
            .detach()
            .reshape(n_head, -1, self.dims.d_model)
            for layer in self.need_z
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
        z_saved, out_saved = self._trace(enc, rows, last)
        result: dict[str, torch.Tensor] = {}
        for site in self.sites:
            if site.is_head:
                z = z_saved[site.layer].reshape(len(rows), self.dims.n_head, -1)  # (B, H, dh)
                term = torch.einsum(
                    "bd,dm->bm", z[:, site.head], self.w_heads[site.layer][site.head]
                )
                result[site.name] = term.float().cpu()  # (B, d_model)
            else:
                result[site.name] = out_saved[site.layer].float().cpu()  # (B, d_model)
        return result

    def _trace(self, enc, rows, last):
        envoy, arch = self.envoy, self.arch
        layers, need_z, need_out = self.layers, self.need_z, self.need_out
        with envoy.trace(**enc) as tracer:
            z_saved = nnsight.save({})
            out_saved = nnsight.save({})
            for layer in layers:
                proj = arch.o_proj(envoy, layer)
                if layer in need_z:
                    z_saved[layer] = proj.input[rows, last]
                if layer in need_out:
                    out_saved[layer] = proj.output[rows, last]
            tracer.stop()
        return z_saved, out_saved
