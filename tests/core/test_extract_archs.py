"""Sites of Llama and Gemma-2 models equal forward hooks and o_proj weight slices."""

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from inversescope.core.architectures import dims_of
from inversescope.core.extract import SiteReader

TEXTS = ["When Mary and John went to the store, John gave a drink to", "hello", "a b c d e"]


def tiny(arch):
    common = dict(
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=400,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(hidden_size=32, **common)).eval()
    # Gemma-2's heads are not hidden_size / n_heads wide: o_proj is (48 <- 4 * 16 = 64)
    return Gemma2ForCausalLM(Gemma2Config(hidden_size=48, head_dim=16, **common)).eval()


def hooked(model, tokenizer, texts, layer, head):
    o_proj = model.model.layers[layer].self_attn.o_proj
    seen = {}
    handle = o_proj.register_forward_hook(lambda m, a, o: seen.update(z=a[0], o=o))
    rows = []
    try:
        for text in texts:
            with torch.no_grad():
                model(input_ids=torch.tensor([tokenizer(text)["input_ids"]]))
            z, o = seen["z"][0, -1], seen["o"][0, -1]
            if head is None:
                rows.append(o)
            else:
                dh = z.shape[0] // model.config.num_attention_heads
                w = o_proj.weight[:, head * dh : (head + 1) * dh]  # (out, dh)
                rows.append(w @ z[head * dh : (head + 1) * dh])
    finally:
        handle.remove()
    return torch.stack(rows)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_sites_equal_hooks(arch, tiny_tokenizer):
    model = tiny(arch)
    dims = dims_of(model.config)
    assert dims.architecture == arch and dims.n_layer == 3 and dims.n_head == 4
    sites = ["L0H1", "L1.attn", "L2H3", "L2H0"]
    got = SiteReader(model, tiny_tokenizer, sites).read(TEXTS)
    for site, layer, head in (("L0H1", 0, 1), ("L1.attn", 1, None), ("L2H3", 2, 3), ("L2H0", 2, 0)):
        want = hooked(model, tiny_tokenizer, TEXTS, layer, head)
        assert got[site].shape == (len(TEXTS), model.config.hidden_size)
        torch.testing.assert_close(got[site], want, rtol=1e-4, atol=1e-5)
    heads = sum(
        SiteReader(model, tiny_tokenizer, [f"L1H{h}" for h in range(4)]).read(TEXTS).values()
    )
    torch.testing.assert_close(heads, got["L1.attn"], rtol=1e-4, atol=1e-5)  # o_proj has no bias
