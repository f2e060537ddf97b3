"""Sampling methods as objects: one lookup, their own configs, self-describing checkpoints."""

import copy

import pytest
import torch

from inversescope.core.config import ControlsConfig, KernelConfig, SampleConfig
from inversescope.core.methods import METHODS, checkpoint, from_checkpoint, method_for


def _config(method: str) -> ControlsConfig:
    return ControlsConfig.model_validate(
        {
            "method": method,
            "generator": {"n_heads": 2, "d_head": 8},
            "inversionview": {"hidden": 16, "sample_noise_scale": 0.3},
        }
    )


def test_lookup_and_keys_see_only_their_own_config():
    kernel = KernelConfig()
    assert set(METHODS) == {"inversescope", "inversionview", "prior"}
    inv = method_for(_config("inversescope"))
    iv = method_for(_config("inversionview"))
    prior = method_for(_config("prior"))
    assert (inv.name, iv.name, prior.name) == ("inversescope", "inversionview", "prior")
    inv_key = _config("inversescope").training_key(kernel)
    assert inv_key["n_heads"] == 2 and "hidden" not in inv_key
    # InversionView's sampling noise changes what sampling does, not what trains
    assert _config("inversionview").training_key(kernel) == {"hidden": 16}
    assert _config("inversionview").sampling_key(kernel) == {"noise_scale": 0.3}
    default_iv = ControlsConfig(method="inversionview")
    assert default_iv.sampling_key(KernelConfig(epsilon=0.2)) == {"noise_scale": 0.2}
    assert _config("prior").training_key(kernel) == {} == _config("prior").sampling_key(kernel)
    assert not prior.trains and prior.build(None, ["L0H0"], 4) is None


def test_the_kernel_enters_the_generator_key_only_through_the_noise_that_reads_it():
    gaussian = _config("inversescope")
    assert gaussian.training_key(KernelConfig(epsilon=0.1)) == gaussian.training_key(
        KernelConfig(epsilon=0.3, delta=0.5, shape="gaussian")
    )
    exact = ControlsConfig.model_validate({"generator": {"noise": {"family": "kernel"}}})
    assert exact.training_key(KernelConfig(epsilon=0.1)) != exact.training_key(
        KernelConfig(epsilon=0.3)
    )
    assert "scale" not in str(exact.training_key(KernelConfig())["noise"])


@pytest.mark.parametrize("method", ["inversescope", "inversionview"])
def test_checkpoint_rebuilds_without_the_runs_site_list(tiny_gpt2, method):
    torch.manual_seed(1)
    m = method_for(_config(method))
    sites = ["L2H1", "L0H0", "L1.attn"]
    model = m.build(copy.deepcopy(tiny_gpt2), sites, 32)
    with torch.no_grad():  # away from the zero initialisation, so a wrong load would show
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    ckpt = checkpoint(m, model, sites, 32)
    assert ckpt["sites"] == sites and ckpt["d_site"] == 32 and ckpt["method"] == method
    fresh_backbone = copy.deepcopy(model.backbone)  # a backbone trained with it (full mode)
    loaded_method, loaded = from_checkpoint(ckpt, fresh_backbone)
    assert loaded_method.name == method and loaded.sites == sites
    z = torch.randn(3, 32)
    site_idx = torch.tensor([loaded.sites.index("L1.attn")] * 3)
    ids = torch.randint(0, 50, (3, 6))
    mask = torch.ones_like(ids)
    model.eval()
    with torch.no_grad():
        want = model(ids, mask, z, site_idx).logits
        got = loaded(ids, mask, z, site_idx).logits
    torch.testing.assert_close(got, want)


def test_a_checkpoint_that_does_not_fit_is_refused(tiny_gpt2):
    m = method_for(_config("inversescope"))
    model = m.build(copy.deepcopy(tiny_gpt2), ["L0H0"], 32)
    ckpt = checkpoint(m, model, ["L0H0"], 32)
    ckpt["state"]["stray.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="does not fit"):
        from_checkpoint(ckpt, copy.deepcopy(tiny_gpt2))


@pytest.mark.parametrize("method", ["inversescope", "inversionview", "prior"])
def test_generate_is_reproducible_from_the_site_streams(tiny_gpt2, method):
    m = method_for(_config(method))
    model = m.build(tiny_gpt2, ["L0H0"], 32)
    settings = SampleConfig(max_new_tokens=5)
    z = torch.randn(4, 32)
    idx = torch.zeros(4, dtype=torch.long)
    eos = tiny_gpt2.config.eos_token_id

    def draw(seed):
        streams = m.streams(seed, KernelConfig(), 32, "cpu")
        with torch.no_grad():
            return m.generate(model, tiny_gpt2, z, idx, streams, settings, eos)

    assert torch.equal(draw(7), draw(7))
    assert draw(7).shape[0] == 4
