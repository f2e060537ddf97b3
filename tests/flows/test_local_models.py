"""Real weights without the hub: every hub preset runs with ``source: local`` + ``path`` (a
save_pretrained directory), shown on tiny random models of each architecture; a Llama target with
a GPT-2 backbone (each with its own tokenizer) runs to samples; a local model's cache key reads
file names, sizes and mtimes, not gigabytes of content."""

import os

import numpy as np
import polars as pl
import pytest
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from inversescope.config import check_run, load_run_config
from inversescope.core.tokenizer import train_bpe_tokenizer
from inversescope.flows.stage import run_keys, run_stage
from inversescope.storage.activations import ActivationStore
from inversescope.storage.keys import file_fingerprint
from inversescope.storage.layout import load_backbone, read_samples
from inversescope.tasks import ioi, refusal


def save_model(path, arch, tokenizer, n_layer, n_head, width, chat=False):
    """A tiny random model of ``arch`` with ``tokenizer``, saved with save_pretrained."""
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    if arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=width, n_positions=256, **ids)
        )
    else:
        common = dict(
            num_hidden_layers=n_layer,
            num_attention_heads=n_head,
            num_key_value_heads=max(1, n_head // 4),
            head_dim=4,
            hidden_size=width,
            intermediate_size=2 * width,
            max_position_embeddings=256,
            **ids,
        )
        cls, cfg = (
            (LlamaForCausalLM, LlamaConfig)
            if arch == "llama"
            else (Gemma2ForCausalLM, Gemma2Config)
        )
        model = cls(cfg(**common))
    if chat:
        tokenizer.chat_template = refusal.CHAT_TEMPLATE
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizers():
    train, _ = ioi.generate_prior(400, 10, seed=1)
    texts = [r["text"] + r["answer"] for r in train]
    words = [r["text"] for r in refusal.read_queries(refusal_file())]
    # two different vocabularies: the target's and the backbone's
    return train_bpe_tokenizer(texts + words, 400), train_bpe_tokenizer(texts, 300)


def refusal_file():
    from inversescope.tasks import resolve_data_file

    return resolve_data_file("data:refusal_toy.jsonl")


# hub preset -> (architecture, layers, heads) of its target, the sites read here
HUB_TARGETS = {
    "ioi-gpt2": ("gpt2", 12, 12, ["L0H0", "L11H11"]),
    "icl-gemma2-2b": ("gemma2", 26, 8, ["L0.attn", "L25.attn"]),
    "refusal-llama3-8b": ("llama", 32, 32, ["L0.attn", "L31.attn"]),
}
QUICK = [
    "prior.n_train=48",
    "prior.n_test=16",
    "extract.batch_size=16",
    "extract.chunk_rows=32",
    "labeller=null",
    "sample.n_examples=4",
]


@pytest.mark.parametrize("preset", sorted(HUB_TARGETS))
def test_hub_preset_runs_on_a_local_directory(preset, tokenizers, tmp_path):
    arch, n_layer, n_head, sites = HUB_TARGETS[preset]
    target_tok = tokenizers[0]
    path = save_model(
        tmp_path / "model",
        arch,
        target_tok,
        n_layer,
        n_head,
        96 if arch == "gpt2" else 32,
        chat=preset.startswith("refusal"),
    )
    extra = ["prior.files=[data:refusal_toy.jsonl]"] if preset.startswith("refusal") else []
    run = load_run_config(
        preset,
        [*QUICK, *extra, "target.source=local", f"target.path={path}", f"extract.sites={sites}"],
    )
    check_run(run)  # sites checked against the directory's config.json, no weights
    work = tmp_path / "work"
    for name in ("prior", "target", "extract"):
        assert run_stage(name, run, work).status == "ran"
    store = ActivationStore(run_stage("extract", run, work).path)
    width = 96 if arch == "gpt2" else 32
    for site in sites:
        acts = store.read("test", site)
        assert acts.shape == (16, width) and np.isfinite(acts).all()
    assert {run_stage(n, run, work).status for n in ("prior", "target", "extract")} == {"cached"}


def test_llama_target_with_gpt2_backbone_samples_as_text(tokenizers, tmp_path, small):
    """The target (Llama, its own tokenizer) re-reads samples that the GPT-2 backbone (another
    tokenizer, read from the backbone's own directory) wrote as text."""
    target_tok, backbone_tok = tokenizers
    target = save_model(tmp_path / "llama", "llama", target_tok, 2, 4, 48)
    backbone = save_model(tmp_path / "gpt2", "gpt2", backbone_tok, 2, 2, 32)
    run = load_run_config(
        "ioi-tiny",
        [
            *small,
            "target.source=local",
            f"target.path={target}",
            "backbone.source=local",
            f"backbone.path={backbone}",
        ],
    )
    check_run(run)
    work = tmp_path / "work"
    results = {
        n: run_stage(n, run, work)
        for n in ("prior", "target", "extract", "backbone", "controls", "sample")
    }
    from inversescope.storage.artifacts import ArtifactStore

    _, tok = load_backbone(ArtifactStore(work).require("backbone", results["backbone"].key))
    assert len(tok) == len(backbone_tok) != len(target_tok)
    samples = read_samples(results["sample"].path)
    assert samples.height == 3 * 3 * 4
    written = samples.filter(pl.col("text") != "")
    assert written.height > 0 and written["distance"].is_finite().all()
    d_site = ActivationStore(results["extract"].path).read("test", "L1H0").shape[1]
    assert d_site == 48  # the target's width, not the backbone's 32


def test_directory_fingerprint_reads_names_sizes_and_mtimes(tmp_path):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "weights.bin").write_bytes(b"a" * 1000)
    (d / "sub" / "config.json").write_text("{}")
    before = file_fingerprint(d)
    stat = (d / "weights.bin").stat()
    # same size and mtime, other content: not read, so the same fingerprint
    (d / "weights.bin").write_bytes(b"b" * 1000)
    os.utime(d / "weights.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_fingerprint(d) == before
    # a rewrite (new mtime) or a renamed file changes it
    os.utime(d / "weights.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert file_fingerprint(d) != before
    os.utime(d / "weights.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (d / "sub" / "config.json").rename(d / "sub" / "other.json")
    assert file_fingerprint(d) != before
    # a single file (a data file, a feature module) still hashes its content
    f = tmp_path / "data.csv"
    f.write_text("x")
    one = file_fingerprint(f)
    f.write_text("y")
    assert file_fingerprint(f) != one


def test_local_target_key_follows_the_directory(tokenizers, tmp_path, small):
    path = save_model(tmp_path / "m", "gpt2", tokenizers[0], 2, 2, 32)
    over = [*small, "target.source=local", f"target.path={path}"]
    first = run_keys(load_run_config("ioi-tiny", over))["target"]
    assert run_keys(load_run_config("ioi-tiny", over))["target"] == first
    weights = next(p for p in path.iterdir() if p.suffix == ".safetensors")
    os.utime(weights, ns=(0, weights.stat().st_mtime_ns + 10**9))
    assert run_keys(load_run_config("ioi-tiny", over))["target"] != first
