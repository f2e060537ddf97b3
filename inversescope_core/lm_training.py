"""Training a causal LM on text, and measuring how well it completes a task's answer.

The trainer takes an iterator of batches and an evaluator; it never sees a path or a hub name.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from inversescope.core.config import TrainConfig
from inversescope.core.progress import Progress

log = logging.getLogger(__name__)


def _framed(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[str]:
    eos = tokenizer.eos_token
    return [eos + t + eos for t in texts]


def lm_lengths(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[int]:
    """Each text's row length in ``lm_batch`` (its tokens with the two ``<eos>``)."""
    return [len(ids) for ids in lm_ids(tokenizer, texts)]


def lm_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[np.ndarray]:
    """Each text's ``<eos> text <eos>`` token ids (int64), the rows of ``lm_batch``. Trainers
    encode their texts once with it and batch the rows with ``padded_batch``: the tokenizer's
    padded call took 6 ms a batch of 64 IOI prompts, on every step, where encoding 2048 prompts
    at once took 95 ms and padding encoded rows 0.3 ms a batch."""
    return [
        np.asarray(ids, dtype=np.int64) for ids in tokenizer(_framed(tokenizer, texts))["input_ids"]
    ]


def padded_batch(rows: list[np.ndarray], pad_id: int | None) -> dict[str, torch.Tensor]:
    """Token rows right-padded with ``pad_id`` into a batch with next-token labels; padding is
    masked out of the labels (-100). Equal to the tokenizer's own right padding."""
    if pad_id is None:
        raise ValueError("the tokenizer has no padding token: batches of texts need one")
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    input_ids, attention_mask = torch.from_numpy(ids), torch.from_numpy(mask)  # (B, T)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def lm_batch(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> dict[str, torch.Tensor]:
    """``<eos> text <eos>`` rows, right-padded, with next-token labels; padding is masked out of
    the labels (-100). The one way every LM of the pipeline reads a text in training."""
    return padded_batch(lm_ids(tokenizer, texts), tokenizer.pad_token_id)


class TextBatches:
    """Endless shuffled batches of ``<eos> text <eos>``; padding is masked out of the labels.
    Its data order (generator and pending indices) is checkpointable, so a resumed training
    sees exactly the batches an uninterrupted one would."""

    def __init__(
        self, texts: list[str], tokenizer: PreTrainedTokenizerBase, batch_size: int, seed: int
    ):
        self.texts, self.tokenizer, self.batch_size = texts, tokenizer, batch_size
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self._ids: list[np.ndarray] | None = None  # every text's rows, encoded at the first batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if len(self.order) < self.batch_size:
            fresh = list(range(len(self.texts)))
            self.rng.shuffle(fresh)
            self.order.extend(fresh)
        idx, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        if self._ids is None:
            self._ids = lm_ids(self.tokenizer, self.texts)
        return padded_batch([self._ids[i] for i in idx], self.tokenizer.pad_token_id)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "order": list(self.order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.order = list(state["order"])


class CheckpointedBatches(Protocol):
    """Batches whose position can be saved and restored (``TextBatches``, the controls' batches)."""

    def __next__(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainResult:
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    precision: str = "float32"  # what the step's matrix products ran in


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware at a gain measured here: a
    CUDA device that supports it, a CPU with AMX tiles (the controls stage 1.2x faster on a
    2-core AMX host, benchmarks/README.md). Elsewhere (AVX2, AVX-512, AVX-512 BF16 without
    AMX) the gain is unmeasured, and oneDNN's emulated bfloat16 products can be slower than
    float32 ones."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported())
    return False


def training_precision(precision: str, device: torch.device) -> str:
    """``TrainConfig.precision`` on ``device``: float32 or bfloat16 (``auto`` resolved)."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


def train_causal_lm(
    model: PreTrainedModel,
    batches: CheckpointedBatches,
    schedule: TrainConfig,
    evaluate: Callable[[PreTrainedModel], dict[str, float]] | None = None,
    should_stop: Callable[[dict[str, float]], bool] | None = None,
    stage: str = "train",
    checkpoint: Path | Checkpoint | None = None,
) -> TrainResult:
    """AdamW with linear warm-up (then ``schedule.decay``) on next-token cross-entropy;
    evaluates every ``eval_every`` steps and stops early once ``should_stop(metrics)`` holds.
    ``schedule.precision`` sets the forward pass's autocast (the evaluations run in float32).

    With ``checkpoint`` (a file in the stage's partial directory, or any ``Checkpoint``), every
    ``schedule.checkpoint_every`` steps the whole training state (weights, optimiser, schedule,
    every random generator, the batches' position, the curves so far) is written to it
    atomically, and a call that finds it continues from there: the final weights equal an
    uninterrupted run's. The caller deletes it once the model is saved."""
    # deferred: models imports transformers' model classes
    from inversescope.core.models import prefer_fast_attention

    device = next(model.parameters()).device
    prefer_fast_attention(model)
    if hasattr(model, "parameter_groups"):  # groups at their own share of the learning rate
        groups = model.parameter_groups()
        params = [
            {"params": g["params"], "lr": schedule.lr * g.get("lr_ratio", 1.0)} for g in groups
        ]
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    # the fused update (one kernel for all weights) took a third of the time of the per-tensor one
    opt = torch.optim.AdamW(
        params,
        lr=schedule.lr,
        weight_decay=schedule.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule.lr_factor)
    result = TrainResult(steps=0, precision=training_precision(schedule.precision, device))
    if checkpoint is not None and checkpoint.exists():
        state = _load_state(checkpoint)
        _load_trainable(model, state["model"], checkpoint)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        batches.load_state_dict(state["batches"])
        _set_rng_state(state["rng"])
        # a resumed run keeps the precision it began in (auto may resolve otherwise here)
        precision = state.get("precision", "float32")
        result = TrainResult(state["step"], state["losses"], state["evals"], precision)
        log.info(
            "%s: resuming from the checkpoint at step %d of %d (%s)",
            stage,
            result.steps,
            schedule.steps,
            checkpoint,
        )
    if result.precision != "float32":
        log.info("%s: matrix products in %s (autocast)", stage, result.precision)
    low = result.precision == "bfloat16"
    progress = Progress(stage, schedule.steps, "steps", start=result.steps)
    model.train()
    for step in range(result.steps + 1, schedule.steps + 1):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low):
            loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        result.steps = step
        value = float(loss.detach())
        result.losses.append((step, value))
        progress.update(1, f"loss {value:.3f}")
        if evaluate is not None and (step % schedule.eval_every == 0 or step == schedule.steps):
            model.eval()
            metrics = evaluate(model)
            model.train()
            result.evals.append((step, metrics))
            log.info(
                "%s: step %d %s", stage, step, " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            )
            if should_stop is not None and should_stop(metrics):
                log.info("%s: stopping early at step %d", stage, step)
                break
        every = schedule.checkpoint_every
        if checkpoint is not None and every and step % every == 0 and step < schedule.steps:
            _save_checkpoint(checkpoint, model, opt, sched, batches, result)
    model.eval()
    return result


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights training changes: the frozen rest (a LoRA base, a frozen backbone: gigabytes
    at paper scale) is rebuilt as it was from the stage's inputs."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor], path) -> None:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != trainable:
        raise RuntimeError(
            f"training checkpoint {path} does not fit the model: {len(set(state) ^ trainable)} "
            "trainable weights differ; delete it to start over"
        )
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n, v in state.items():
            params[n].copy_(v)


class Checkpoint(Protocol):
    """Where a training state lives when it is not a local file (a bucket object): ``save``
    must replace the previous state whole or not at all."""

    def exists(self) -> bool: ...

    def load(self) -> dict[str, Any]: ...

    def save(self, state: dict[str, Any]) -> None: ...


def _load_state(checkpoint: Path | Checkpoint) -> dict[str, Any]:
    if isinstance(checkpoint, Path):
        # our own file in our own partial directory: it holds numpy and Python generator states
        return torch.load(checkpoint, map_location="cpu", weights_only=False)
    return checkpoint.load()


def _save_checkpoint(path: Path | Checkpoint, model, opt, sched, batches, result) -> None:
    state = {
        "step": result.steps,
        "model": _trainable(model),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "batches": batches.state_dict(),
        "rng": _rng_state(),
        "losses": result.losses,
        "evals": result.evals,
        "precision": result.precision,
    }
    if not isinstance(path, Path):
        path.save(state)
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint whole


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Token-weighted mean next-token loss of ``model(**batch)`` over fixed batches."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch).loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def continuation_token_logprobs(
    model: PreTrainedModel, prompts: list[list[int]], continuations: list[list[int]], pad_id: int
) -> list[torch.Tensor]:
    """For each (prompt, continuation) pair of token ids, the log-probability of each
    continuation token given the prompt and the tokens before it, from one forward pass over the
    right-padded batch.  # list of (len(continuation),)"""
    device = next(model.parameters()).device
    seqs = [p + c for p, c in zip(prompts, continuations, strict=True)]
    ids = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    logp = torch.log_softmax(
        model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1
    ).cpu()  # (B, T, V)
    out = []
    for r, (p, c) in enumerate(zip(prompts, continuations, strict=True)):
        pos = torch.arange(len(p) - 1, len(p) + len(c) - 1)  # positions predicting c
        out.append(logp[r, pos, torch.tensor(c)])
    return out


def continuation_logprob(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    continuations: list[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """Sum over each continuation's tokens of log p(token | prompt, earlier tokens).  # (N,)"""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = torch.empty(len(prompts))
    for i in range(0, len(prompts), batch_size):
        ps = [tokenizer(p)["input_ids"] for p in prompts[i : i + batch_size]]
        cs = [
            tokenizer(c, add_special_tokens=False)["input_ids"]
            for c in continuations[i : i + batch_size]
        ]
        for r, lp in enumerate(continuation_token_logprobs(model, ps, cs, pad)):  # (len(c),)
            out[i + r] = lp.sum()
    return out


def answer_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    answers: list[str],
    distractors: list[str],
    batch_size: int = 256,
) -> float:
    """Share of prompts after which the whole answer is likelier than the whole distractor (IOI:
    IO above S; for one-token answers the same as comparing next-token logits)."""
    a = continuation_logprob(model, tokenizer, prompts, answers, batch_size)
    d = continuation_logprob(model, tokenizer, prompts, distractors, batch_size)
    return float((a > d).float().mean())
