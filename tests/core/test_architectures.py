"""One architecture table serves extraction, the generator and InversionView."""

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from inversescope.core.architectures import architecture_of, dims_of

MODELS = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=64)),
    "llama": lambda: LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            hidden_size=32,
            intermediate_size=64,
            vocab_size=64,
        )
    ),
    "gemma2": lambda: Gemma2ForCausalLM(
        Gemma2Config(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            hidden_size=48,
            head_dim=16,
            intermediate_size=64,
            vocab_size=64,
        )
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_table_entry_finds_blocks_projection_and_head_layout(name):
    model = MODELS[name]()
    cfg = model.config
    arch = architecture_of(cfg)
    dims = dims_of(cfg)
    assert arch.name == dims.architecture == name
    blocks = arch.blocks(model)
    assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) == dims.n_layer
    proj = arch.o_proj(model, dims.n_layer - 1)
    w = arch.weight_in_out(proj)  # (n_head * head_dim, d_model)
    assert w.shape == (dims.n_head * arch.head_dim(cfg), dims.d_model)
    # the key/value layout is the one the attention layers cache
    expect_kv = {"gpt2": 4, "llama": 2, "gemma2": 1}[name]
    assert arch.kv_heads(cfg) == expect_kv
    assert arch.head_dim(cfg) == {"gpt2": 8, "llama": 8, "gemma2": 16}[name]


def test_unsupported_architecture_is_named():
    with pytest.raises(ValueError, match="'bert' is not supported; accepted: gpt2, llama, gemma2"):
        architecture_of(type("Cfg", (), {"model_type": "bert"})())
