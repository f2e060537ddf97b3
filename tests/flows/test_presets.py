"""Every preset that ships is well-formed: its config validates and its sites resolve against a
tiny random model of the target's architecture (same depth and heads, small width)."""

import pytest
from transformers import Gemma2Config, GPT2Config, LlamaConfig

from inversescope.config import ConfigError, check_run, load_run_config
from inversescope.core.models import HUB_SHAPES
from inversescope.core.sites import check_sites
from inversescope.flows.cli import main
from inversescope.tasks import preset_names

CONFIGS = {"gpt2": GPT2Config, "llama": LlamaConfig, "gemma2": Gemma2Config}


def tiny_like(name: str, folder):
    dims = HUB_SHAPES[name]
    if dims.architecture == "gpt2":
        cfg = GPT2Config(
            n_layer=dims.n_layer, n_head=dims.n_head, n_embd=2 * dims.n_head, vocab_size=64
        )
    else:
        cfg = CONFIGS[dims.architecture](
            num_hidden_layers=dims.n_layer,
            num_attention_heads=dims.n_head,
            num_key_value_heads=1,
            hidden_size=2 * dims.n_head,
            head_dim=2,
            intermediate_size=8,
            vocab_size=64,
        )
    cfg.save_pretrained(folder)
    return folder


# Presets whose prior is the user's own files validate with the shipped benign toy file.
USER_FILES = {
    "refusal-llama3-8b": [
        "prior.files=[data:refusal_toy.jsonl]",
        "prior.n_train=1000",
        "prior.n_test=200",
    ]
}


@pytest.mark.parametrize("preset", preset_names())
def test_preset_validates_against_its_architecture(preset, tmp_path):
    extra = USER_FILES.get(preset, [])
    if extra:
        with pytest.raises(ConfigError, match="task refusal needs query files: prior.files="):
            check_run(load_run_config(preset))
    run = load_run_config(preset, extra)
    check_run(run)  # offline, hub targets resolve through their known shapes
    if run.target.source == "hub":
        folder = tiny_like(run.target.name, tmp_path / "target")
        local = load_run_config(preset, [*extra, "target.source=local", f"target.path={folder}"])
        check_run(local)
        dims = HUB_SHAPES[run.target.name]
        check_sites(local.extract.sites, dims)


def test_ioi_gpt2_is_the_paper_setup():
    run = load_run_config("ioi-gpt2")
    assert len(run.extract.sites) == 144 and run.target.name == "gpt2"
    assert run.backbone.name == "gpt2" and run.backbone.finetune == "full"
    assert (run.controls.generator.n_heads, run.controls.generator.d_head) == (32, 64)
    assert (run.controls.train.lr, run.controls.train.warmup) == (1e-5, 1000)
    assert (run.kernel.shape, run.kernel.epsilon, run.kernel.delta) == ("hard", 0.1, 0.1)
    with pytest.raises(ConfigError, match="L12H0: layer 12 does not exist"):
        check_run(load_run_config("ioi-gpt2", ["extract.sites=[L12H0]"]))


def test_refusal_llama3_8b_is_the_paper_setup():
    run = load_run_config("refusal-llama3-8b")
    assert run.task == "refusal" and run.target.name == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert run.extract.sites == [f"L{i}.attn" for i in range(32)]
    assert (run.backbone.finetune, run.backbone.lora_rank) == ("lora", 8)
    assert run.labeller is not None and run.labeller.name == "Qwen/Qwen2-7B-Instruct"
    assert (run.prior.max_tokens, run.dtype) == (60, "auto")


def test_small_presets_need_no_hub():
    for preset in ("ioi-tiny", "icl-tiny", "refusal-tiny"):
        run = load_run_config(preset)
        assert run.target.source == "train" and run.backbone.source in ("train", "target")
        assert run.labeller is None or run.labeller.source == "target"


def test_presets_command_lists_storage(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in preset_names():
        assert name in out
    assert "23.2 GB" in out  # ioi-gpt2: 105,000 prompts x 144 heads x 768 x float16
