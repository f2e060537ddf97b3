"""Both generators condition on the direction of z: invariant to its scale, and using it."""

import copy

import pytest
import torch

from inversescope.core.conditioning import direction
from inversescope.core.config import ControlsConfig, TrainConfig
from inversescope.core.lm_training import train_causal_lm
from inversescope.core.methods import method_for

D = 32


def _model(method, backbone):
    cfg = ControlsConfig.model_validate(
        {
            "method": method,
            "generator": {"n_heads": 2, "d_head": 8},
            "inversionview": {"hidden": 16},
        }
    )
    return method_for(cfg).build(backbone, ["L0H0", "L1H1"], D)


def _logits(model, z, ids):
    mask = torch.ones_like(ids)
    site = torch.zeros(len(z), dtype=torch.long)
    with torch.no_grad():
        return model(ids, mask, z, site).logits


def test_direction_is_unit_rms_and_scale_free():
    z = torch.randn(5, D) * torch.tensor([[0.1], [1.0], [10.0], [0.01], [3.0]])
    u = direction(z)
    torch.testing.assert_close(u.pow(2).mean(dim=1), torch.ones(5))
    torch.testing.assert_close(direction(7.5 * z), u)


@pytest.mark.parametrize("method", ["inversescope", "inversionview"])
def test_output_is_invariant_to_the_scale_of_z(method, make_backbone):
    torch.manual_seed(0)
    model = _model(method, make_backbone()).eval()
    with torch.no_grad():  # away from zero-initialised values, so z matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    z, ids = torch.randn(3, D) * 0.2, torch.randint(0, 20, (3, 6))
    base = _logits(model, z, ids)
    for scale in (0.01, 5.0):
        torch.testing.assert_close(_logits(model, scale * z, ids), base, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["inversescope", "inversionview"])
def test_output_uses_z_after_one_step(method, make_backbone):
    """From initialisation (inversescope: values zero, so z has no effect yet), one training
    step on activations as small as ioi-tiny's (norm 0.15) makes the output depend on z."""
    torch.manual_seed(0)
    model = _model(method, copy.deepcopy(make_backbone()))
    z = torch.randn(16, D) * (0.15 / D**0.5)  # ||z|| about 0.15
    ids = torch.randint(1, 20, (16, 6))
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids,
        "z": z,
        "site_idx": torch.zeros(16, dtype=torch.long),
    }
    train_causal_lm(model, iter([batch]), TrainConfig(steps=1, lr=1e-2, warmup=0, eval_every=1))
    model.eval()
    probe = ids[:2]
    a = _logits(model, z[:2], probe)
    b = _logits(model, z[[1, 0]], probe)  # the same texts under each other's activation
    assert (a - b).abs().max() > 1e-4


def _generator(backbone, **generator):
    cfg = ControlsConfig.model_validate({"generator": {"n_heads": 2, "d_head": 8, **generator}})
    return method_for(cfg).build(backbone, ["L0H0", "L1H1"], D)


def test_control_blocks_choose_where_the_control_layers_go(make_backbone):
    backbone = make_backbone()
    n = len(_generator(copy.deepcopy(backbone)).controls)
    model = _generator(copy.deepcopy(backbone), control_blocks=[-1])
    assert model.blocks == [n - 1] and len(model.controls) == 1
    with torch.no_grad():  # a non-zero value, so the one control layer acts
        for p in model.controls.parameters():
            p.add_(0.05 * torch.randn_like(p))
    z, ids = torch.randn(2, D), torch.randint(0, 20, (2, 6))
    assert (_logits(model, z, ids) - _logits(model, z[[1, 0]], ids)).abs().max() > 1e-4
    for bad in ([n], [0, -n]):
        with pytest.raises(ValueError, match="control_blocks"):
            _generator(copy.deepcopy(backbone), control_blocks=bad)


def test_log_norm_reads_the_norm_only_when_asked(make_backbone):
    torch.manual_seed(0)
    model = _generator(make_backbone(), log_norm=True).eval()
    z, ids = torch.randn(2, D), torch.randint(0, 20, (2, 6))
    with torch.no_grad():  # everything away from init except the norm's directions (zero)
        for name, p in model.named_parameters():
            if name != "norm_directions":
                p.add_(0.05 * torch.randn_like(p))
    torch.testing.assert_close(_logits(model, 3.0 * z, ids), _logits(model, z, ids))
    with torch.no_grad():
        model.norm_directions.normal_()
    assert (_logits(model, 3.0 * z, ids) - _logits(model, z, ids)).abs().max() > 1e-4
