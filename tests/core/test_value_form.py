"""The control layer's value forms: parameter counts, zero-init equality with the backbone, and
the projected form against an independent multi-head computation."""

import math

import pytest
import torch

from inversescope.core.config import ControlsConfig, GeneratorConfig
from inversescope.core.generator import ConditionalGenerator, ControlLayer
from inversescope.core.lm_training import mean_loss
from inversescope.core.methods import method_for

SITES = ["L0H0", "L1.attn"]


@pytest.fixture()
def backbone(make_backbone):
    """Small random GPT-2 backbones for these tests."""

    def make(**kw):
        return make_backbone(**kw)

    return make


@pytest.mark.parametrize(
    ("d_model", "d_cond", "heads", "d_head"),
    [(768, 768, 32, 64), (768, 4096, 32, 64), (32, 24, 4, 8)],
)
def test_value_parameter_counts(d_model, d_cond, heads, d_head):
    with torch.device("meta"):
        projected = ControlLayer(d_model, d_cond, heads, d_head, "projected")
        per_head = ControlLayer(d_model, d_cond, heads, d_head, "per_head")
    hd = heads * d_head
    # weights d_cond·H·d_head + H·d_head·d_model, plus the biases v̄ (H·d_head) and ō (d_model)
    assert projected.value_parameters() == d_cond * hd + hd * d_model + hd + d_model
    assert per_head.value_parameters() == d_cond * heads * d_model + heads * d_model
    qk = (d_model + 1) * hd + (d_cond + 1) * hd + 2 * d_model  # + the query's layer norm
    assert sum(p.numel() for p in projected.parameters()) == qk + projected.value_parameters()
    if (d_cond, heads) == (4096, 32):  # the figures: ~10 M against 100 M per block
        assert 9.9e6 < projected.value_parameters() < 10.1e6
        assert per_head.value_parameters() > 100e6


@pytest.mark.parametrize("form", ["projected", "per_head"])
def test_zero_init_equals_backbone_exactly(form, backbone):
    bb = backbone()
    gen = ConditionalGenerator(bb, SITES, d_site=24, n_heads=4, d_head=8, value_form=form)
    ids = torch.randint(1, 20, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    z, site = torch.randn(4, 24) * 10, torch.tensor([0, 1, 1, 0])
    assert torch.equal(
        gen(ids, mask, z, site).logits, bb(input_ids=ids, attention_mask=mask).logits
    )


def test_projected_trains_from_zero_init(backbone):
    """O starts at zero, V does not: after one step the condition changes the logits (V = O = 0
    would leave both without gradient forever)."""
    bb = backbone()
    gen = ConditionalGenerator(bb, SITES, d_site=24, n_heads=4, d_head=8, value_form="projected")
    ids = torch.randint(1, 20, (4, 9))
    z, site = torch.randn(4, 24), torch.tensor([0, 1, 1, 0])
    opt = torch.optim.SGD([p for p in gen.parameters() if p.requires_grad], lr=0.5)
    gen(ids, torch.ones_like(ids), z, site, labels=ids).loss.backward()
    assert all(c.o.weight.grad.abs().sum() > 0 for c in gen.controls)
    opt.step()
    with gen.conditioned(z, site):
        conditioned = bb(input_ids=ids).logits
    assert not torch.allclose(conditioned, bb(input_ids=ids).logits)
    assert (
        mean_loss(
            gen,
            [
                {
                    "input_ids": ids,
                    "attention_mask": torch.ones_like(ids),
                    "labels": ids,
                    "z": z,
                    "site_idx": site,
                }
            ],
        )
        > 0
    )


def test_projected_equals_concat_then_output_projection():
    """Σ_h w_h (O_h v_h) + ō equals the textbook form O [w_1 v_1; ...; w_H v_H] + ō."""
    layer = ControlLayer(16, 12, 3, 5, "projected")
    torch.nn.init.normal_(layer.o.weight)
    torch.nn.init.normal_(layer.o.bias)
    h, e = torch.randn(2, 7, 16), torch.randn(2, 12)
    k, v = layer.keys_values(e)
    got = layer(h, k, v)
    q = layer.q(layer.q_norm(h)).view(2, 7, 3, 5)
    kk = layer.k(e).view(2, 3, 5)
    vv = layer.v(e).view(2, 3, 5)
    w = torch.tanh((q * kk[:, None]).sum(-1) / math.sqrt(5))  # (B, T, H)
    heads = (w[..., None] * vv[:, None]).reshape(2, 7, 15)  # (B, T, H * dh)
    torch.testing.assert_close(got, layer.o(heads), rtol=1e-5, atol=1e-5)


def test_config_selects_the_form_and_rejects_others(backbone):
    bb = backbone()
    for form in ("projected", "per_head"):
        cfg = ControlsConfig(generator=GeneratorConfig(n_heads=4, d_head=8, value_form=form))
        gen = method_for(cfg).build(bb, SITES, 24)
        assert {c.value_form for c in gen.controls} == {form}
        bb = backbone()
    assert GeneratorConfig().value_form == "per_head"  # the measured better (benchmarks/)
    with pytest.raises(ValueError, match="value_form"):
        GeneratorConfig(value_form="full")
    with pytest.raises(ValueError, match="'wide'"):
        ControlLayer(8, 8, 2, 4, "wide")
