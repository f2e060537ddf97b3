"""Sizes of the hub presets at full size, from the packaged public configs on the meta device:
parameter counts against published numbers, and every stage within an 80 GB GPU."""

from importlib import resources
from pathlib import Path

import pytest

from inversescope.config import load_run_config
from inversescope.core.architectures import dims_of
from inversescope.core.methods import method_for
from inversescope.core.models import HUB_SHAPES
from inversescope.core.sizing import (
    GPU_BYTES,
    meta_model,
    packaged_config,
    parameter_count,
    size_config,
    source_config,
    truncated_parameter_count,
)
from inversescope.tasks import preset_names

CONFIG_DIR = Path(str(resources.files("inversescope.tasks") / "model_configs"))
HUB_PRESETS = [p for p in preset_names() if load_run_config(p).target.source == "hub"]
# published parameter counts (GPT-2 small with its tied embeddings counted once)
PUBLISHED = {
    "gpt2": 124_439_808,
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,
    "meta-llama/Meta-Llama-3-8B-Instruct": 8_030_261_248,
    "google/gemma-2-2b": 2_614_341_888,
    "Qwen/Qwen2-7B-Instruct": 7_615_616_512,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published(name):
    model = meta_model(packaged_config(name, CONFIG_DIR))
    assert parameter_count(model) == PUBLISHED[name]
    assert {p.device.type for p in model.parameters()} == {"meta"}  # nothing allocated


def test_truncation_drops_later_blocks_and_untied_head():
    llama = meta_model(packaged_config("meta-llama/Meta-Llama-3-8B", CONFIG_DIR))
    block = parameter_count(llama.model.layers[0])
    head = llama.lm_head.weight.numel()
    assert truncated_parameter_count(llama, 31) == PUBLISHED["meta-llama/Meta-Llama-3-8B"] - head
    assert truncated_parameter_count(llama, 29) == truncated_parameter_count(llama, 31) - 2 * block
    gpt2 = meta_model(packaged_config("gpt2", CONFIG_DIR))  # tied head: kept
    assert truncated_parameter_count(gpt2, 11) == PUBLISHED["gpt2"]


def test_hub_shapes_agree_with_packaged_configs():
    for name, dims in HUB_SHAPES.items():
        assert dims_of(packaged_config(name, CONFIG_DIR)) == dims


def test_unknown_model_names_the_packaged_ones():
    with pytest.raises(ValueError, match="'org/none'.*gpt2"):
        packaged_config("org/none", CONFIG_DIR)


def test_hub_presets_use_the_gpt2_small_backbone():
    assert set(HUB_PRESETS) >= {"ioi-gpt2", "icl-gemma2-2b", "refusal-llama3-8b"}
    finetune = {"ioi": "full", "icl": "full", "refusal": "lora"}
    for name in HUB_PRESETS:
        run = load_run_config(name)
        assert (run.backbone.source, run.backbone.name) == ("hub", "gpt2"), name
        assert run.backbone.finetune == finetune[run.task], name
        assert (run.controls.generator.n_heads, run.controls.generator.d_head) == (32, 64)


@pytest.mark.parametrize("preset", HUB_PRESETS)
def test_every_hub_preset_fits_an_80gb_gpu_in_every_stage(preset):
    sizes = size_config(load_run_config(preset), CONFIG_DIR)
    expected = {"backbone", "extract"} | {
        f"{s}[{m}]" for s in ("controls", "sample") for m in ("inversescope", "inversionview")
    }
    assert expected <= set(sizes.stages)
    for stage in sizes.stages:
        assert 0 < sizes.peak(stage) <= GPU_BYTES, (stage, sizes.memory[stage])
    assert sizes.backbone_params == PUBLISHED["gpt2"]


def test_controls_count_equals_a_built_generator():
    """The meta-device count equals the same controls built with allocated weights."""
    run = load_run_config(
        "ioi-tiny", ["controls.generator.n_heads=4", "controls.generator.d_head=8"]
    )
    sizes = size_config(run, CONFIG_DIR)
    bb = meta_model(source_config(run.backbone, CONFIG_DIR)).to_empty(device="cpu")
    model = method_for(run.controls).build(bb, run.extract.sites, run.target.arch.d_model)
    own = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    assert sizes.controls_params["inversescope"] == own
    enc = len(run.extract.sites) * run.target.arch.d_model**2
    assert own > enc  # the site encoders plus the control layers


def test_presets_command_shows_parameters_and_memory(capsys):
    from inversescope.flows.cli import main

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for preset in HUB_PRESETS:
        block = out.split(preset, 1)[1].split("\n    peak", 1)
        assert "params: target" in block[0] and "backbone 124.4 M" in block[0], preset
        assert "controls[inversescope]" in block[1] and "too big" not in block[1]
    assert "params: target 8.03 B" in out  # Llama-3-8B-Instruct
