"""Building, loading and describing the language models the pipeline works with."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from inversescope.core.config import TinyModelConfig
from inversescope.core.sites import ModelDims
from inversescope.core.threads import TORCH_STATE

log = logging.getLogger(__name__)


# Shapes of the hub models our presets name, to check sites and estimate storage where the hub
# cannot be reached (the weights themselves always come from the hub or a local directory).
HUB_SHAPES: dict[str, ModelDims] = {
    "gpt2": ModelDims("gpt2", 12, 12, 768),
    "google/gemma-2-2b": ModelDims("gemma2", 26, 8, 2304),
    "meta-llama/Meta-Llama-3-8B-Instruct": ModelDims("llama", 32, 32, 4096),
}


def build_tiny_gpt2(arch: TinyModelConfig, vocab_size: int, eos_id: int) -> GPT2LMHeadModel:
    """A small randomly initialised GPT-2 (no dropout) of the given sizes. Its activation is
    GPT-2's tanh approximation of GELU as one fused operator (``gelu_pytorch_tanh``, the same
    formula as ``gelu_new``): at d_model 128 the unfused one's five elementwise passes, forward
    and backward, were a tenth of a training step on CPU (benchmarks/README.md)."""
    config = GPT2Config(
        activation_function="gelu_pytorch_tanh",
        n_layer=arch.n_layer,
        n_head=arch.n_head,
        n_embd=arch.d_model,
        n_positions=arch.n_positions,
        vocab_size=vocab_size,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def prefer_fast_attention(model: torch.nn.Module) -> None:
    """On CPU, train short-context models with transformers' eager attention: for sequences of
    a few dozen tokens it is faster than the fused (SDPA) kernel, forward and backward
    (measured, benchmarks/README.md); the two agree to float rounding. Elsewhere nothing changes."""
    for m in model.modules():
        if not isinstance(m, PreTrainedModel) or next(m.parameters()).device.type != "cpu":
            continue
        if getattr(m.config, "max_position_embeddings", 1 << 30) <= SHORT_CONTEXT:
            m.set_attn_implementation("eager")


SHORT_CONTEXT = 256  # positions: at most this, eager attention is the faster on CPU


def load_model(
    name_or_path: str | Path,
    revision: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """Load a causal LM in eval mode from a directory or a hub name (in ``dtype``, default
    float32)."""
    kwargs = {} if revision is None else {"revision": revision}
    with TORCH_STATE:  # from_pretrained patches torch.nn.init process-wide while it builds
        model = AutoModelForCausalLM.from_pretrained(
            str(name_or_path), dtype=dtype or torch.float32, **kwargs
        )
    return model.to(device).eval()


def load_tokenizer(
    name_or_path: str | Path, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """Load a tokenizer; give it a padding token (its end-of-text token) if it has none."""
    kwargs = {} if revision is None else {"revision": revision}
    tok = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(requested: str, device: str) -> torch.dtype:
    """``auto``: bfloat16 on a CUDA device that supports it, else float32."""
    if requested != "auto":
        return DTYPES[requested]
    if str(device).startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def pick_device(requested: str = "auto") -> str:
    """``auto`` takes CUDA when present; anything else is used as given."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested
