"""Stage ``target``: the model to interpret.

``train``: a byte-level BPE tokenizer trained on the prior, and a small GPT-2 trained on
prompt + answer until it completes the task (validation on held-out train rows; accuracy on the
test split in the manifest). ``hub``/``local``: records where the model comes from.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from inversescope.errors import StageError
from inversescope.storage import layout
from inversescope.storage.keys import source_fingerprint
from inversescope.tasks import load_task, task_renderer

if TYPE_CHECKING:
    from inversescope.config import RunConfig
    from inversescope.flows.stage import StageContext
    from inversescope.storage.artifacts import Artifact

log = logging.getLogger(__name__)

NAME = "target"
RESUMABLE = True  # training continues from its last checkpoint
SEEDED = True  # initialises and trains a model from the global generators
VAL_ROWS = 500
INPUTS: tuple[str, ...] = ("prior",)


def config_of(run: RunConfig) -> dict[str, Any]:
    t = run.target
    if t.source != "train":
        return source_fingerprint(t)
    # train_prompts unset: the key it had before the option existed
    unset = {"train_prompts"} if t.train_prompts is None else set()
    cfg = t.model_dump(mode="json", exclude={"name", "revision", "path", *unset})
    return {"seed": run.seed, **cfg, "train": t.train.key()}


def build(ctx: StageContext) -> dict[str, Any]:
    t = ctx.run.target
    if t.source == "train":
        return _train(ctx.run, ctx.inputs["prior"], ctx)
    record = {
        "source": t.source,
        "name": t.name,
        "revision": t.revision,
        "path": str(t.path) if t.path else None,
    }
    layout.write_target_record(ctx.out, record)
    return record


def _train(run: RunConfig, prior: Artifact, ctx: StageContext) -> dict[str, Any]:
    # torch, transformers and tokenizers deferred: computing keys must not import them
    from inversescope.core.lm_training import TextBatches, answer_accuracy, train_causal_lm
    from inversescope.core.models import build_tiny_gpt2, pick_device
    from inversescope.core.tokenizer import train_bpe_tokenizer

    t = run.target
    task = load_task(run.task)
    train = layout.read_split(prior, "train")
    if t.train_prompts is not None:
        train = train.head(t.train_prompts)  # the prior's first N prompts, in its order
    test = layout.read_split(prior, "test")
    n_val = min(VAL_ROWS, len(train) // 10)
    fit, val = train[n_val:], train[:n_val]
    tokenizer = train_bpe_tokenizer(
        [p + a for p, a in zip(fit["text"], fit["answer"], strict=True)], t.arch.vocab_size
    )
    if hasattr(task, "CHAT_TEMPLATE"):
        tokenizer.chat_template = task.CHAT_TEMPLATE
    render = task_renderer(run.task, tokenizer) or (lambda text: text)
    full = [render(p) + a for p, a in zip(fit["text"], fit["answer"], strict=True)]
    prefix = tokenizer.eos_token  # TextBatches trains on <eos> text <eos>: read it that way too
    model = build_tiny_gpt2(t.arch, len(tokenizer), tokenizer.eos_token_id)
    model.to(pick_device(run.device))
    longest = max(len(tokenizer(x)["input_ids"]) for x in full) + 2
    if longest > t.arch.n_positions:
        raise StageError(
            f"target.arch.n_positions={t.arch.n_positions} is shorter than the longest training "
            f"sequence ({longest} tokens); raise it"
        )

    def accuracy(model, rows) -> float:
        return answer_accuracy(
            model,
            tokenizer,
            [prefix + render(p) for p in rows["text"]],
            rows["answer"].to_list(),
            rows["distractor"].to_list(),
        )

    result = train_causal_lm(
        model,
        TextBatches(full, tokenizer, t.train.batch_size, run.seed),
        t.train,
        evaluate=lambda m: {"val_accuracy": accuracy(m, val)} if n_val else {},
        should_stop=lambda m: m.get("val_accuracy", 0.0) >= t.stop_accuracy,
        stage="target",
        checkpoint=layout.train_checkpoint(ctx.out),
    )
    layout.drop_train_checkpoint(ctx.out)
    test_acc = accuracy(model, test)
    log.info("target: test accuracy %.4f after %d steps", test_acc, result.steps)
    if test_acc < t.min_accuracy:
        raise StageError(
            f"target: test accuracy {test_acc:.3f} is below target.min_accuracy={t.min_accuracy}; "
            f"train longer (target.train.steps={t.train.steps}) or a larger model"
        )
    layout.save_model(ctx.out, model, tokenizer)
    layout.write_target_record(
        ctx.out,
        {"source": "train", "name": None, "revision": None, "path": None, "prefix": prefix},
    )
    return {
        "test_accuracy": test_acc,
        "steps": result.steps,
        "final_loss": result.losses[-1][1],
        "loss_curve": result.losses[:: max(1, len(result.losses) // 50)],
        "evals": result.evals,
        "precision": result.precision,
        "n_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
    }
