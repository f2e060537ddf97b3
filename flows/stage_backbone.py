"""Stage ``backbone``: the generator's LM, fine-tuned on the prior's prompts (full or LoRA),
with the end-of-text token as both begin and end of sequence. ``train``: a small GPT-2 trained
from scratch with the target's tokenizer. The manifest records the held-out (test) loss."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inversescope.flows.stage_prior import read_split
from inversescope.storage.artifacts import Artifact
from inversescope.storage.keys import file_fingerprint

if TYPE_CHECKING:
    from inversescope.flows.config import RunConfig

log = logging.getLogger(__name__)

NAME = "backbone"
INPUTS: tuple[str, ...] = ("prior", "target")
RESUMABLE = False


def config_of(run: RunConfig) -> dict[str, Any]:
    b = run.backbone
    cfg = {"seed": run.seed, **b.model_dump(mode="json", exclude={"path"})}
    if b.source == "local":
        assert b.path is not None
        cfg["content"] = file_fingerprint(b.path)
    return cfg


def build(run: RunConfig, inputs: dict[str, Artifact], out: Path) -> dict[str, Any]:
    from inversescope.core.lm_training import mean_loss, text_batches, train_causal_lm
    from inversescope.core.models import build_tiny_gpt2, load_model, load_tokenizer, pick_device

    b = run.backbone
    device = pick_device(run.device)
    if b.source == "train":
        tokenizer = load_tokenizer(inputs["target"].path / "tokenizer")
        model = build_tiny_gpt2(b.arch, len(tokenizer), tokenizer.eos_token_id).to(device)
    else:
        where = b.name if b.source == "hub" else b.path
        revision = b.revision if b.source == "hub" else None
        tokenizer, model = load_tokenizer(where, revision), load_model(where, revision, device)
    if b.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=b.lora_rank, lora_alpha=2 * b.lora_rank, task_type="CAUSAL_LM")
        )
    train_texts = read_split(inputs["prior"], "train")["text"].to_list()
    test_texts = read_split(inputs["prior"], "test")["text"].to_list()
    held_out = list(_fixed_batches(test_texts, tokenizer, b.train.batch_size))
    result = train_causal_lm(
        model,
        text_batches(train_texts, tokenizer, b.train.batch_size, run.seed),
        b.train,
        evaluate=lambda m: {"held_out_loss": mean_loss(m, held_out)},
        stage="backbone",
    )
    if b.finetune == "lora":
        model = model.merge_and_unload()
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "tokenizer")
    return {
        "held_out_loss": result.evals[-1][1]["held_out_loss"],
        "evals": result.evals,
        "steps": result.steps,
        "loss_curve": result.losses[:: max(1, len(result.losses) // 50)],
    }


def _fixed_batches(texts, tokenizer, batch_size, limit: int = 1024):
    from inversescope.core.lm_training import text_batches

    texts = texts[:limit]
    it = text_batches(texts, tokenizer, batch_size, seed=0)
    for _ in range((len(texts) + batch_size - 1) // batch_size):
        yield next(it)


def load_backbone(artifact: Artifact, device: str = "cpu"):
    from inversescope.core.models import load_model, load_tokenizer

    return (
        load_model(artifact.path / "model", device=device),
        load_tokenizer(artifact.path / "tokenizer"),
    )
