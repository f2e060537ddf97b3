"""The conditional generator: a frozen decoder-only backbone plus trainable site encoders and one
control layer per backbone block (or per chosen block: ``control_blocks``).

Condition (see ``core.conditioning``): the direction of z at unit RMS, ``u = z / ||z|| sqrt(d)``.
Site encoder (one per site): ``e = LN(E_s u)``, a (d_site -> d_site) linear map, Kaiming init,
then a layer norm (the paper's formulas omit its layer norms: they go where a transformer puts
them, on the encoded condition and before the control layer's query). With ``log_norm``,
``e = LN(E_s u + log||z|| a_s)``, a_s a learned per-site vector starting at zero: the norm is
information that cosine acceptance ignores, so whether it helps is measured (benchmarks/).
Control layer (one per block), H heads with queries and keys of size d_head, for hidden states
h_i of that block:

    q_i = Q LN(h_i) + q̄        (H, d_head)   per position
    k   = K e + k̄              (H, d_head)   per condition: computed once, reused at every step
    w_i = tanh(q_i · k / sqrt(d_head))       (H,)  one key, so tanh instead of softmax

and one of two value forms (``value_form``):

- ``per_head`` (the default, measured better on ioi-tiny): every head has a d_model-sized value,
  ``v = V e + v̄`` (H, d_model), V and v̄ zero-initialised; ``h_i <- h_i + Σ_h w_i,h v_h``.
  Value parameters d_cond·H·d_model (100 M per block for a 4096-wide site on a 768-wide
  backbone at 32 heads).
- ``projected`` (the usual multi-head form): ``v = V e + v̄`` (H, d_head), then one output
  projection O (H·d_head -> d_model), zero-initialised while V keeps its default init (so that
  gradients reach both): ``h_i <- h_i + O [w_i,1 v_1; ...; w_i,H v_H] + ō``. Value parameters
  d_cond·H·d_head + H·d_head·d_model (about 10 M per block for that site). As each head's
  weight is a scalar, ``O [w v] = Σ_h w_h (O_h v_h)``: ``O_h v_h`` (H, d_model) is computed once
  per condition and the per-position work is the same weighted sum over heads as per_head.

The 1/sqrt(d_head) keeps tanh out of saturation at Kaiming init. In either form the last linear
map of the value path starts at zero, so the untrained generator's logits equal the backbone's
exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedModel

from inversescope.core.architectures import architecture_of
from inversescope.core.conditioning import direction
from inversescope.core.config import control_block_indices

VALUE_FORMS = ("projected", "per_head")


class ControlLayer(nn.Module):
    def __init__(
        self, d_model: int, d_cond: int, n_heads: int, d_head: int, value_form: str = "per_head"
    ):
        super().__init__()
        if value_form not in VALUE_FORMS:
            raise ValueError(f"value_form={value_form!r}; accepted: {', '.join(VALUE_FORMS)}")
        self.n_heads, self.d_head, self.d_model = n_heads, d_head, d_model
        self.value_form = value_form
        self.q_norm = nn.LayerNorm(d_model)  # before the query, as a transformer block
        self.q = nn.Linear(d_model, n_heads * d_head)  # bias = q̄
        self.k = nn.Linear(d_cond, n_heads * d_head)  # bias = k̄
        if value_form == "projected":
            self.v = nn.Linear(d_cond, n_heads * d_head)  # bias = v̄, default init
            self.o = nn.Linear(n_heads * d_head, d_model)  # bias = ō, zero init
            nn.init.zeros_(self.o.weight)
            nn.init.zeros_(self.o.bias)
        else:
            self.v = nn.Linear(d_cond, n_heads * d_model)  # bias = v̄, zero init
            self.o = None
            nn.init.zeros_(self.v.weight)
            nn.init.zeros_(self.v.bias)

    def keys_values(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-condition key (B, H, d_head) and each head's contribution to the hidden state
        (B, H, d_model) from encoded z (B, d)."""
        b = e.shape[0]
        k = self.k(e).view(b, self.n_heads, self.d_head)  # (B, H * dh) -> (B, H, dh)
        if self.o is None:
            return k, self.v(e).view(b, self.n_heads, self.d_model)  # (B, H, d_model)
        v = self.v(e).view(b, self.n_heads, self.d_head)  # (B, H, dh)
        o = self.o.weight.view(self.d_model, self.n_heads, self.d_head)  # (d_model, H, dh)
        return k, torch.einsum("bhd,mhd->bhm", v, o)  # O_h v_h per head -> (B, H, d_model)

    def forward(self, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The control term to add to hidden states h (B, T, d_model), given ``keys_values``."""
        b, t, _ = h.shape
        q = self.q(self.q_norm(h)).view(b, t, self.n_heads, self.d_head)  # -> (B, T, H, dh)
        # one key per row: q_i . k per head -> (B, T, H)
        w = torch.tanh(torch.einsum("bthd,bhd->bth", q, k) / math.sqrt(self.d_head))
        out = torch.einsum("bth,bhm->btm", w, v)  # sum over heads of w v -> (B, T, d_model)
        return out if self.o is None else out + self.o.bias

    def value_parameters(self) -> int:
        """Parameters of the value path (V, v̄ and, projected, O, ō)."""
        return sum(p.numel() for m in (self.v, self.o) if m is not None for p in m.parameters())


class ConditionalGenerator(nn.Module):
    """Backbone + site encoders + control layers. Call ``condition(z, site_idx)`` (or use
    ``conditioned``) before running the backbone; the control terms enter through forward hooks
    on the backbone's blocks, so the backbone's own forward, cache and sampling apply."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        sites: list[str],
        d_site: int,
        n_heads: int = 32,
        d_head: int = 64,
        backbone_mode: str = "frozen",
        lora_rank: int = 8,
        value_form: str = "per_head",
        control_blocks: list[int] | None = None,
        log_norm: bool = False,
        backbone_lr_ratio: float = 1.0,
    ):
        super().__init__()
        self.backbone = backbone
        # the backbone's own weights only (full mode): LoRA adapters are new weights
        self.backbone_lr_ratio = backbone_lr_ratio if backbone_mode == "full" else 1.0
        self.sites = list(sites)
        d_model = backbone.config.hidden_size
        self.encoders = nn.Parameter(torch.empty(len(sites), d_site, d_site))  # (S, d, d)
        for i in range(len(sites)):
            nn.init.kaiming_uniform_(self.encoders.data[i], a=math.sqrt(5))
        # log ||z|| enters along a learned per-site direction, zero at init (S, d)
        self.norm_directions = nn.Parameter(torch.zeros(len(sites), d_site)) if log_norm else None
        self.cond_norm = nn.LayerNorm(d_site)  # on the encoded condition
        blocks = architecture_of(backbone.config).blocks(backbone)
        self.blocks = control_block_indices(control_blocks, len(blocks))
        self.controls = nn.ModuleList(
            ControlLayer(d_model, d_site, n_heads, d_head, value_form) for _ in self.blocks
        )
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._hooks = [
            blocks[b].register_forward_hook(self._hook(i)) for i, b in enumerate(self.blocks)
        ]
        if backbone_mode not in ("frozen", "lora", "full"):
            raise ValueError(f"backbone_mode={backbone_mode!r}; accepted: frozen, lora, full")
        backbone.requires_grad_(backbone_mode == "full")
        if backbone_mode == "lora":
            # peft deferred: only the lora mode needs it
            from peft import LoraConfig, inject_adapter_in_model

            # LoRA adapters (peft's default target modules for the architecture) train; the
            # backbone's own weights stay frozen.
            inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank), backbone)

    def _hook(self, layer: int):
        def add_control(module, args, output):
            if self._kv is None:
                return None
            k, v = self._kv[layer]
            hidden = output[0] if isinstance(output, tuple) else output  # (B, T, d_model)
            hidden = hidden + self.controls[layer](hidden, k, v)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return add_control

    def encode(self, z: torch.Tensor, site_idx: torch.Tensor) -> torch.Tensor:
        """Site-specific encoding of z's direction (B, d) -> (B, d), layer-normed."""
        u = direction(z)  # (B, d), unit RMS
        # (B, d) x (B, d_out, d_in)^T -> (B, d_out): row b through its site's encoder
        e = torch.einsum("bd,bde->be", u, self.encoders[site_idx].transpose(1, 2))
        if self.norm_directions is not None:  # log ||z|| (B, 1) along its site's direction
            log_norm = z.norm(dim=-1, keepdim=True).clamp_min(1e-12).log()
            e = e + log_norm * self.norm_directions[site_idx]  # (B, 1) * (B, d)
        return self.cond_norm(e)

    def condition(self, z: torch.Tensor | None, site_idx: torch.Tensor | None = None) -> None:
        """Fix the condition of every row of the next forward passes (None: plain backbone)."""
        if z is None:
            self._kv = None
            return
        e = self.encode(z, site_idx)
        self._kv = [ctrl.keys_values(e) for ctrl in self.controls]

    @contextmanager
    def conditioned(
        self, z: torch.Tensor | None, site_idx: torch.Tensor | None = None
    ) -> Iterator[None]:
        self.condition(z, site_idx)
        try:
            yield
        finally:
            self._kv = None

    def forward(self, input_ids, attention_mask, z, site_idx, labels=None):
        with self.conditioned(z, site_idx):
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def train(self, mode: bool = True) -> ConditionalGenerator:
        super().train(mode)
        if not self.backbone_trains:
            self.backbone.eval()  # a frozen backbone keeps its eval behaviour (no dropout)
        return self

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Encoders, control layers and whatever of the backbone trains (LoRA adapters or all)."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {
            k: v
            for k, v in self.state_dict().items()
            if not k.startswith("backbone.") or k in trainable
        }

    def parameter_groups(self) -> list[dict]:
        """The optimiser's groups: the backbone's trainable weights at ``backbone_lr_ratio`` of
        the learning rate (full mode; LoRA adapters are new weights and get all of it), the
        encoders and control layers at all of it."""
        backbone = {id(p) for p in self.backbone.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        own = [p for p in trainable if id(p) not in backbone]
        rest = [p for p in trainable if id(p) in backbone]
        groups = [{"params": own, "lr_ratio": 1.0}]
        if rest:
            groups.append({"params": rest, "lr_ratio": self.backbone_lr_ratio})
        return groups

    @property
    def backbone_trains(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())
