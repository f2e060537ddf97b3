"""One table of the decoder architectures we support (GPT-2, Llama, Gemma-2): where the blocks
and each block's attention output projection live, how the projection stores its weight, and the
attention head layout. Extraction, the generator and the InversionView baseline all read it.

Paths are attribute names from the causal LM (or an nnsight envoy of it, which mirrors its module
tree), so the same entry serves plain modules and traced envoys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PretrainedConfig

from inversescope.core.sites import ModelDims


def _walk(root: Any, path: str) -> Any:
    for name in path.split("."):
        root = getattr(root, name)
    return root


@dataclass(frozen=True)
class Architecture:
    name: str
    blocks_path: str  # causal LM -> its list of transformer blocks
    o_proj_path: str  # block -> its attention output projection
    # the projection's weight as (in = n_head * d_head, out = d_model)
    weight_in_out: Callable[[torch.nn.Module], torch.Tensor]
    layer_count: str  # config attribute names of depth, heads and width
    head_count: str
    width: str

    def blocks(self, model: Any) -> Any:
        """The block list of a model (``nn.ModuleList``) or of its nnsight envoy."""
        return _walk(model, self.blocks_path)

    def o_proj(self, model: Any, layer: int) -> Any:
        """Layer ``layer``'s attention output projection (module or envoy)."""
        return _walk(self.blocks(model)[layer], self.o_proj_path)

    def dims(self, config: PretrainedConfig) -> ModelDims:
        return ModelDims(
            self.name,
            getattr(config, self.layer_count),
            getattr(config, self.head_count),
            getattr(config, self.width),
        )

    def kv_heads(self, config: PretrainedConfig) -> int:
        """Key/value heads per attention layer (fewer than query heads under grouped queries)."""
        return getattr(config, "num_key_value_heads", None) or getattr(config, self.head_count)

    def head_dim(self, config: PretrainedConfig) -> int:
        """Width of one attention head (Gemma-2's may exceed width / heads)."""
        explicit = getattr(config, "head_dim", None)
        return explicit or getattr(config, self.width) // getattr(config, self.head_count)


ARCHITECTURES: dict[str, Architecture] = {
    # GPT-2's Conv1D stores its weight as (in, out).
    "gpt2": Architecture(
        "gpt2", "transformer.h", "attn.c_proj", lambda m: m.weight, "n_layer", "n_head", "n_embd"
    ),
    # Llama and Gemma-2: nn.Linear stores (out, in); Gemma-2's o_proj maps n_head * head_dim
    # (wider than hidden_size) to hidden_size.
    **{
        name: Architecture(
            name,
            "model.layers",
            "self_attn.o_proj",
            lambda m: m.weight.T,
            "num_hidden_layers",
            "num_attention_heads",
            "hidden_size",
        )
        for name in ("llama", "gemma2")
    },
}


def architecture_of(config: PretrainedConfig) -> Architecture:
    """The table entry of a transformers config; ``ValueError`` naming an unsupported one."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"architecture {model_type!r} is not supported; accepted: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type]


def dims_of(config: PretrainedConfig) -> ModelDims:
    """Depth, heads and width of a transformers config."""
    return architecture_of(config).dims(config)
