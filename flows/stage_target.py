"""Stage ``target``: the model to interpret.

``train``: a byte-level BPE tokenizer trained on the prior, and a small GPT-2 trained on
prompt + answer until it completes the task (validation on held-out train rows; accuracy on the
test split in the manifest). ``hub``/``local``: records where the model comes from.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inversescope.flows.errors import StageError
from inversescope.flows.stage_prior import read_split
from inversescope.storage.artifacts import Artifact, write_json_atomic
from inversescope.storage.keys import file_fingerprint
from inversescope.tasks import load_task, task_renderer

if TYPE_CHECKING:
    from inversescope.flows.config import RunConfig

log = logging.getLogger(__name__)

NAME = "target"
RESUMABLE = False
VAL_ROWS = 500
TARGET_FILE = "target.json"


INPUTS: tuple[str, ...] = ("prior",)


def config_of(run: RunConfig) -> dict[str, Any]:
    t = run.target
    if t.source == "hub":
        return {"source": "hub", "name": t.name, "revision": t.revision}
    if t.source == "local":
        assert t.path is not None
        return {"source": "local", "path": str(t.path), "content": file_fingerprint(t.path)}
    return {"seed": run.seed, **t.model_dump(mode="json", exclude={"name", "revision", "path"})}


def build(run: RunConfig, inputs: dict[str, Artifact], out: Path) -> dict[str, Any]:
    t = run.target
    if t.source == "train":
        return _train(run, inputs["prior"], out)
    ref = {
        "source": t.source,
        "name": t.name,
        "revision": t.revision,
        "path": str(t.path) if t.path else None,
    }
    write_json_atomic(out / TARGET_FILE, ref)
    return ref


def _train(run: RunConfig, prior: Artifact, out: Path) -> dict[str, Any]:
    from inversescope.core.lm_training import answer_accuracy, text_batches, train_causal_lm
    from inversescope.core.models import build_tiny_gpt2, pick_device
    from inversescope.core.tokenizer import train_bpe_tokenizer

    t = run.target
    task = load_task(run.task)
    train = read_split(prior, "train")
    test = read_split(prior, "test")
    n_val = min(VAL_ROWS, len(train) // 10)
    fit, val = train[n_val:], train[:n_val]
    tokenizer = train_bpe_tokenizer(
        [p + a for p, a in zip(fit["text"], fit["answer"], strict=True)], t.arch.vocab_size
    )
    if hasattr(task, "CHAT_TEMPLATE"):
        tokenizer.chat_template = task.CHAT_TEMPLATE
    render = task_renderer(run.task, tokenizer) or (lambda text: text)
    full = [render(p) + a for p, a in zip(fit["text"], fit["answer"], strict=True)]
    prefix = tokenizer.eos_token  # text_batches trains on <eos> text <eos>: read it that way too
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
        text_batches(full, tokenizer, t.train.batch_size, run.seed),
        t.train,
        evaluate=lambda m: {"val_accuracy": accuracy(m, val)} if n_val else {},
        should_stop=lambda m: m.get("val_accuracy", 0.0) >= t.stop_accuracy,
        stage="target",
    )
    test_acc = accuracy(model, test)
    log.info("target: test accuracy %.4f after %d steps", test_acc, result.steps)
    if test_acc < t.min_accuracy:
        raise StageError(
            f"target: test accuracy {test_acc:.3f} is below target.min_accuracy={t.min_accuracy}; "
            f"train longer (target.train.steps={t.train.steps}) or a larger model"
        )
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "tokenizer")
    write_json_atomic(
        out / TARGET_FILE,
        {"source": "train", "name": None, "revision": None, "path": None, "prefix": prefix},
    )
    return {
        "test_accuracy": test_acc,
        "steps": result.steps,
        "final_loss": result.losses[-1][1],
        "loss_curve": result.losses[:: max(1, len(result.losses) // 50)],
        "evals": result.evals,
        "n_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
    }


def target_renderer(run: RunConfig, artifact: Artifact, tokenizer):
    """The string the target reads for an input text: the task's rendering (refusal: the chat
    template), after the prefix the target was trained with (a target trained here: <eos>).
    None when the target reads the text itself."""
    ref = json.loads((artifact.path / TARGET_FILE).read_text(encoding="utf-8"))
    prefix = ref.get("prefix") or ""
    render = task_renderer(run.task, tokenizer)
    if not prefix:
        return render
    return lambda text: prefix + (render(text) if render is not None else text)


def load_target(artifact: Artifact, device: str = "cpu", dtype=None):
    """(model, tokenizer) of a target artifact, wherever the weights live (``dtype``: a torch
    dtype, default float32)."""
    from inversescope.core.models import load_model, load_tokenizer

    ref = json.loads((artifact.path / TARGET_FILE).read_text(encoding="utf-8"))
    if ref["source"] == "train":
        return (
            load_model(artifact.path / "model", device=device, dtype=dtype),
            load_tokenizer(artifact.path / "tokenizer"),
        )
    where = ref["path"] or ref["name"]
    revision = ref["revision"] if ref["source"] == "hub" else None
    return (
        load_model(where, revision, device=device, dtype=dtype),
        load_tokenizer(where, revision),
    )

