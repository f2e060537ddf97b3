"""The conditional generator, the InversionView decoder and the sampling loop."""

import copy

import pytest
import torch

from inversescope.core.config import TrainConfig
from inversescope.core.generator import ConditionalGenerator
from inversescope.core.inversionview import InversionViewDecoder
from inversescope.core.lm_training import train_causal_lm
from inversescope.core.sampling import decode, sample_tokens

SITES = ["L0H0", "L1H1", "L1.attn"]


@pytest.fixture()
def backbone(make_backbone):
    """Small random GPT-2 backbones for these tests."""

    def make(**kw):
        return make_backbone(initializer_range=0.3, **kw)

    return make


def test_zero_init_equals_backbone_exactly(backbone):
    bb = backbone()
    gen = ConditionalGenerator(bb, SITES, d_site=24, n_heads=4, d_head=8)
    ids = torch.randint(1, 20, (5, 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    z, site = torch.randn(5, 24) * 10, torch.tensor([0, 1, 2, 0, 1])
    got = gen(ids, mask, z, site).logits
    want = bb(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got, want)
    assert not any(p.requires_grad for p in bb.parameters())
    assert all(p.requires_grad for n, p in gen.named_parameters() if not n.startswith("backbone"))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_backbone_modes(mode, backbone):
    bb = backbone()
    reference = copy.deepcopy(bb)
    gen = ConditionalGenerator(bb, SITES, d_site=8, n_heads=2, d_head=4, backbone_mode=mode)
    ids = torch.randint(1, 20, (2, 5))
    got = gen(ids, torch.ones_like(ids), torch.randn(2, 8), torch.tensor([0, 1])).logits
    torch.testing.assert_close(got, reference(input_ids=ids).logits)  # LoRA B, V start at 0
    backbone_params = {n: p.requires_grad for n, p in gen.backbone.named_parameters()}
    if mode == "full":
        assert all(backbone_params.values())
    else:
        assert (
            {n for n, g in backbone_params.items() if g}
            == {n for n in backbone_params if "lora_" in n}
            != set()
        )
        saved = gen.trainable_state()
        assert all("lora_" in k for k in saved if k.startswith("backbone."))
    with pytest.raises(ValueError, match="backbone_mode"):
        ConditionalGenerator(backbone(), SITES, 8, backbone_mode="half")


def toy_batches(z_table, seqs, batch=16, noise=0.0):
    """Two conditions, each with its own sequence: learnable only from z."""
    while True:
        which = torch.randint(0, 2, (batch,))
        ids = seqs[which]
        yield {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": ids,
            "z": z_table[which] + noise * torch.randn(batch, z_table.shape[1]),
            "site_idx": torch.zeros(batch, dtype=torch.long),
        }


def test_training_steps_lower_the_loss_and_use_z(backbone):
    bb = backbone()
    gen = ConditionalGenerator(bb, SITES, d_site=16, n_heads=4, d_head=8)
    z_table = torch.randn(2, 16)
    seqs = torch.tensor([[0, 3, 4, 5, 6, 0], [0, 7, 8, 9, 10, 0]])
    batches = toy_batches(z_table, seqs)
    before = float(gen(**next(batches)).loss.detach())
    sched = TrainConfig(steps=150, batch_size=16, lr=3e-3, warmup=5, eval_every=1000)
    result = train_causal_lm(gen, batches, sched)
    after = float(gen(**next(batches)).loss.detach())
    assert after < 0.5 * before, (before, after, result.losses[-1])
    # the frozen backbone did not move; the condition now decides the continuation
    assert torch.equal(gen.backbone.lm_head.weight, bb.lm_head.weight)
    with gen.conditioned(z_table, torch.zeros(2, dtype=torch.long)):
        logits = bb(input_ids=seqs[:, :1]).logits[:, -1]
    assert logits[0].argmax() == 3 and logits[1].argmax() == 7


def test_conditioned_cache_matches_full_forward(backbone):
    """Control keys/values are fixed per condition, so incremental decoding with the KV cache
    gives the same logits as one full forward pass."""
    bb = backbone()
    gen = ConditionalGenerator(bb, SITES, d_site=16, n_heads=4, d_head=8)
    for ctrl in gen.controls:
        torch.nn.init.normal_(ctrl.v.weight, std=0.5)
    z, site = torch.randn(3, 16), torch.tensor([0, 2, 1])
    ids = torch.randint(1, 20, (3, 7))
    with gen.conditioned(z, site):
        full = bb(input_ids=ids).logits
        out = bb(input_ids=ids[:, :4], use_cache=True)
        step = bb(input_ids=ids[:, 4:5], cache=out.cache, use_cache=True).logits
        plain = None
    plain = bb(input_ids=ids).logits
    torch.testing.assert_close(step[:, -1], full[:, 4], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, plain)  # the condition matters once V is non-zero


def test_sampling_reproducible_and_ends_at_eos(backbone):
    bb = backbone()
    gen = ConditionalGenerator(bb, SITES, d_site=16, n_heads=4, d_head=8)
    z, site = torch.randn(6, 16), torch.zeros(6, dtype=torch.long)

    def draw(seed):
        with gen.conditioned(z, site):
            return sample_tokens(bb, 6, 0, 12, 1.0, torch.Generator().manual_seed(seed))

    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for row in a.tolist():
        if 0 in row:
            assert all(t == 0 for t in row[row.index(0) :])

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    assert decode(Tok(), torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]]), 0) == ["5 6", "7"]


def test_inversionview_prefix_conditions_every_layer(backbone):
    bb = backbone()
    iv = InversionViewDecoder(bb, SITES, d_site=16, hidden=32)
    ids = torch.randint(1, 20, (2, 6))
    mask = torch.ones_like(ids)
    z = torch.randn(2, 16)
    a = iv(ids, mask, z, torch.tensor([0, 0])).logits
    b = iv(ids, mask, -z, torch.tensor([0, 0])).logits
    assert a.shape == (2, 6, 20) and not torch.allclose(a, b)
    cache = iv.prefix(z, torch.tensor([0, 1]))
    assert cache.get_seq_length() == 1
    assert all(p.requires_grad for p in iv.parameters())  # the whole decoder trains
    # teacher-forced logits equal incremental decoding from the prefix
    inc = sample_tokens(
        bb, 2, 0, 1, 1.0, torch.Generator().manual_seed(0), iv.prefix(z, 0 * ids[:, 0])
    )
    assert inc.shape == (2, 1)


def test_the_backbone_trains_at_its_share_of_the_learning_rate(backbone, monkeypatch):
    """``backbone_lr_ratio``: in full mode the backbone's weights get that share of the
    schedule's rate, the encoders and control layers all of it; every trainable weight is in
    exactly one group."""
    gen = ConditionalGenerator(
        backbone(), SITES, d_site=16, n_heads=4, d_head=8, backbone_mode="full",
        backbone_lr_ratio=0.25,
    )  # fmt: skip
    groups = gen.parameter_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in gen.parameters() if p.requires_grad)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in gen.backbone.parameters()}
    seen = []
    real = torch.optim.AdamW
    monkeypatch.setattr(
        torch.optim, "AdamW", lambda params, **kw: seen.append(params) or real(params, **kw)
    )
    z_table = torch.randn(2, 16)
    seqs = torch.tensor([[0, 3, 4, 5, 6, 0], [0, 7, 8, 9, 10, 0]])
    train_causal_lm(gen, toy_batches(z_table, seqs), TrainConfig(steps=1, lr=1e-3, warmup=0))
    assert [g["lr"] for g in seen[0]] == [1e-3, 0.25e-3]
