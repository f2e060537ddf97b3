"""Stage ``backbone``: the generator's LM, fine-tuned on the prior's prompts (full or LoRA, or
not at all: ``finetune: none``), with the end-of-text token as both begin and end of sequence.
``train``: a small GPT-2 trained from scratch with the target's tokenizer; ``target``: the
target's own weights and tokenizer. The manifest records the held-out (test) loss."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from inversescope.storage import layout
from inversescope.storage.keys import file_fingerprint

if TYPE_CHECKING:
    from inversescope.config import RunConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "backbone"
INPUTS: tuple[str, ...] = ("prior", "target")
RESUMABLE = True  # training continues from its last checkpoint
SEEDED = True  # initialises and trains a model from the global generators


def config_of(run: RunConfig) -> dict[str, Any]:
    b = run.backbone
    unused = {"path"} | ({"arch"} if b.source != "train" else set())
    if not b.trains:
        unused |= {"train", "lora_rank"}
    cfg = {"seed": run.seed, **b.model_dump(mode="json", exclude=unused)}
    if b.trains:
        cfg["train"] = b.train.key()
    if b.source == "local":
        assert b.path is not None
        cfg["content"] = file_fingerprint(b.path)
    return cfg


def build(ctx: StageContext) -> dict[str, Any]:
    # torch, transformers and peft deferred: computing keys must not import them
    from inversescope.core.lm_training import TextBatches, mean_loss, train_causal_lm
    from inversescope.core.models import build_tiny_gpt2, pick_device

    b = ctx.run.backbone
    device = pick_device(ctx.run.device)
    if b.source == "train":
        tokenizer = layout.load_saved_tokenizer(ctx.inputs["target"])
        model = build_tiny_gpt2(b.arch, len(tokenizer), tokenizer.eos_token_id).to(device)
    elif b.source == "target":
        model, tokenizer = layout.load_target(ctx.inputs["target"], device)
    else:
        model, tokenizer = b.load(device)
    test_texts = layout.read_split(ctx.inputs["prior"], "test")["text"].to_list()
    held_out = _fixed_batches(test_texts, tokenizer, b.train.batch_size)
    if not b.trains:  # the backbone as it loaded: its held-out loss says what it starts from
        layout.save_model(ctx.out, model, tokenizer)
        return {"held_out_loss": mean_loss(model, held_out), "evals": [], "steps": 0}
    if b.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=b.lora_rank, lora_alpha=2 * b.lora_rank, task_type="CAUSAL_LM")
        )
    train_texts = layout.read_split(ctx.inputs["prior"], "train")["text"].to_list()
    result = train_causal_lm(
        model,
        TextBatches(train_texts, tokenizer, b.train.batch_size, ctx.run.seed),
        b.train,
        evaluate=lambda m: {"held_out_loss": mean_loss(m, held_out)},
        stage="backbone",
        checkpoint=layout.train_checkpoint(ctx.out),
    )
    layout.drop_train_checkpoint(ctx.out)
    if b.finetune == "lora":
        model = model.merge_and_unload()
    layout.save_model(ctx.out, model, tokenizer)
    return {
        "held_out_loss": result.evals[-1][1]["held_out_loss"],
        "evals": result.evals,
        "precision": result.precision,
        "steps": result.steps,
        "loss_curve": result.losses[:: max(1, len(result.losses) // 50)],
    }


def _fixed_batches(texts, tokenizer, batch_size, limit: int = 1024):
    """The first ``limit`` texts in fixed batches (the held-out set of every evaluation)."""
    from inversescope.core.lm_training import lm_batch  # torch: deferred as in build

    texts = texts[:limit]
    return [
        lm_batch(tokenizer, texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)
    ]
