"""The target's accuracy check: whole answers compared by log-likelihood."""

import random

import numpy as np
import pytest
import torch

from inversescope.core.lm_training import answer_accuracy, continuation_logprob


def one_by_one(model, tok, prompt, cont):
    p = tok(prompt)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0], -1)
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(c)))


def test_continuation_logprob_sums_every_token(tiny_gpt2, tiny_tokenizer):
    prompts = ["When Mary and John went to the store, John gave a drink to", "Then,"]
    conts = [" Mary", " Alice and Bob went home"]  # one token, several tokens
    got = continuation_logprob(tiny_gpt2, tiny_tokenizer, prompts, conts, batch_size=1)
    batched = continuation_logprob(tiny_gpt2, tiny_tokenizer, prompts, conts)
    for i, (p, c) in enumerate(zip(prompts, conts, strict=True)):
        want = one_by_one(tiny_gpt2, tiny_tokenizer, p, c)
        assert abs(got[i] - want) < 1e-3 and abs(batched[i] - want) < 1e-3


def test_accuracy_compares_whole_answers(tiny_gpt2, tiny_tokenizer):
    prompts = ["When Mary and John went to the store, John gave a drink to"] * 2
    answers, distractors = [" Mary", " John"], [" John", " Mary"]
    acc = answer_accuracy(tiny_gpt2, tiny_tokenizer, prompts, answers, distractors)
    assert acc == 0.5  # exactly one of a pair and its mirror wins (no ties in a random model)
    same = answer_accuracy(tiny_gpt2, tiny_tokenizer, prompts[:1], [" Mary"], [" Mary"])
    assert same == 0.0  # a tie is not a success


class Crash(RuntimeError):
    """Stands in for a kill in the middle of training."""


class CrashingBatches:
    """Batches that raise after ``after`` of them, as a process killed there would stop."""

    def __init__(self, inner, after: int):
        self.inner, self.left = inner, after

    def __next__(self):
        if self.left == 0:
            raise Crash
        self.left -= 1
        return next(self.inner)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def _tiny_texts_and_config(tokenizer):
    """IOI prompts and a 2-layer GPT-2 config: what the training tests train on."""
    from transformers import GPT2Config

    from inversescope.tasks import ioi

    texts = [r["text"] for r in ioi.generate_prior(64, 0, seed=3)[0]]
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=len(tokenizer))
    return texts, cfg


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_resumed_training_equals_uninterrupted(tiny_tokenizer, tmp_path, caplog, precision):
    """Killed after step 7 with checkpoints every 3 steps, the rerun (a freshly initialised
    model, fresh batches) continues from step 6 and ends with the weights, optimiser state and
    losses of an uninterrupted run; dropout is on, so the random generators' state matters.
    Under bfloat16 autocast too."""
    from transformers import GPT2LMHeadModel

    from inversescope.core.config import TrainConfig
    from inversescope.core.lm_training import TextBatches, train_causal_lm

    texts, cfg = _tiny_texts_and_config(tiny_tokenizer)
    schedule = TrainConfig(
        steps=10, batch_size=8, warmup=4, eval_every=5, checkpoint_every=3, precision=precision
    )

    def fresh(seed: int):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(cfg), TextBatches(texts, tiny_tokenizer, 8, seed=0)

    def evaluate(m):
        return {"w": float(m.lm_head.weight.detach().sum())}

    model, batches = fresh(0)
    torch.manual_seed(1)  # the generator state training starts from, in both runs
    whole = train_causal_lm(model, batches, schedule, evaluate, checkpoint=tmp_path / "a.pt")
    assert (tmp_path / "a.pt").exists()  # the caller drops it after saving the model

    ckpt = tmp_path / "b.pt"
    model_b, batches_b = fresh(0)
    torch.manual_seed(1)
    with pytest.raises(Crash):
        train_causal_lm(model_b, CrashingBatches(batches_b, 7), schedule, evaluate, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=False)["step"] == 6
    model_c, batches_c = fresh(123)  # other initial weights and generator state: all restored
    with caplog.at_level("INFO"):
        resumed = train_causal_lm(model_c, batches_c, schedule, evaluate, checkpoint=ckpt)
    assert "resuming from the checkpoint at step 6 of 10" in caplog.text
    assert resumed.losses == whole.losses and resumed.evals == whole.evals
    assert whole.precision == resumed.precision == precision
    a, c = model.state_dict(), model_c.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


def _tiny_training(tokenizer, precision, checkpoint=None, crash_after=None):
    from transformers import GPT2LMHeadModel

    from inversescope.core.config import TrainConfig
    from inversescope.core.lm_training import TextBatches, train_causal_lm

    texts, cfg = _tiny_texts_and_config(tokenizer)
    schedule = TrainConfig(
        steps=6, batch_size=8, warmup=2, eval_every=100, checkpoint_every=2, precision=precision
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    batches = TextBatches(texts, tokenizer, 8, seed=0)
    if crash_after is not None:
        batches = CrashingBatches(batches, crash_after)
    return model, train_causal_lm(model, batches, schedule, checkpoint=checkpoint)


def test_bfloat16_autocast_trains_float32_weights(tiny_tokenizer):
    """bfloat16 changes the step's products (other losses than float32's from the same start)
    but not what is kept: weights stay float32, and the loss still falls."""
    model32, run32 = _tiny_training(tiny_tokenizer, "float32")
    model16, run16 = _tiny_training(tiny_tokenizer, "bfloat16")
    assert run32.precision == "float32" and run16.precision == "bfloat16"
    assert [v for _, v in run16.losses] != [v for _, v in run32.losses]
    assert all(p.dtype == torch.float32 for p in model16.parameters())
    assert run16.losses[-1][1] < run16.losses[0][1]


def test_auto_precision_follows_the_device_and_a_resume_keeps_its_own(
    tiny_tokenizer, tmp_path, monkeypatch
):
    """``auto`` is bfloat16 only where the hardware multiplies it; a run resumed on a host where
    ``auto`` resolves otherwise keeps the precision its checkpoint began in."""
    from inversescope.core import lm_training

    assert lm_training.training_precision("float32", torch.device("cpu")) == "float32"
    assert lm_training.training_precision("bfloat16", torch.device("cpu")) == "bfloat16"
    native = lm_training.native_bfloat16(torch.device("cpu"))
    assert lm_training.training_precision("auto", torch.device("cpu")) == (
        "bfloat16" if native else "float32"
    )
    monkeypatch.setattr(lm_training, "native_bfloat16", lambda device: True)
    ckpt = tmp_path / "c.pt"
    with pytest.raises(Crash):
        _tiny_training(tiny_tokenizer, "auto", ckpt, crash_after=3)
    assert torch.load(ckpt, weights_only=False)["precision"] == "bfloat16"
    monkeypatch.setattr(lm_training, "native_bfloat16", lambda device: False)
    _, resumed = _tiny_training(tiny_tokenizer, "auto", ckpt)
    assert resumed.precision == "bfloat16"
    _, fresh = _tiny_training(tiny_tokenizer, "auto")
    assert fresh.precision == "float32"


def test_text_batches_state_restores_the_order(tiny_tokenizer):
    from inversescope.core.lm_training import TextBatches

    texts = [f"text {i}" for i in range(13)]
    a = TextBatches(texts, tiny_tokenizer, 5, seed=2)
    for _ in range(4):  # past an epoch boundary
        next(a)
    b = TextBatches(texts, tiny_tokenizer, 5, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(6):
        assert torch.equal(next(a)["input_ids"], next(b)["input_ids"])


def _tokenizer_padded(tokenizer, texts):
    """What the tokenizer's own right padding builds of ``<eos> text <eos>`` rows."""
    eos = tokenizer.eos_token
    tokenizer.padding_side = "right"
    enc = tokenizer([eos + t + eos for t in texts], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_batches_of_encoded_rows_equal_the_tokenizers_own_padding(tiny_tokenizer):
    from inversescope.core.lm_training import TextBatches, lm_batch

    texts = [f"When Mary and John went to the store{', again' * (i % 4)}" for i in range(11)]
    got = lm_batch(tiny_tokenizer, texts)
    ids, mask = _tokenizer_padded(tiny_tokenizer, texts)
    assert mask.min() == 0  # rows of several lengths: padding is there to compare
    assert torch.equal(got["input_ids"], ids) and torch.equal(got["attention_mask"], mask)
    assert torch.equal(got["labels"], ids.masked_fill(mask == 0, -100))
    assert got["input_ids"].dtype == ids.dtype and got["attention_mask"].dtype == mask.dtype
    batches = TextBatches(texts, tiny_tokenizer, 4, seed=1)
    order = list(range(len(texts)))
    random.Random(1).shuffle(order)  # TextBatches' first epoch
    for b in range(2):
        want_ids, want_mask = _tokenizer_padded(
            tiny_tokenizer, [texts[i] for i in order[4 * b : 4 * b + 4]]
        )
        batch = next(batches)
        assert torch.equal(batch["input_ids"], want_ids)
        assert torch.equal(batch["attention_mask"], want_mask)


def test_a_tokenizer_without_padding_is_refused_by_name():
    from inversescope.core.lm_training import padded_batch

    with pytest.raises(ValueError, match="no padding token"):
        padded_batch([np.array([1, 2])], None)


def test_cosine_decay_warms_up_then_falls_to_its_floor():
    from inversescope.core.config import TrainConfig

    constant = TrainConfig(steps=100, warmup=10)
    cosine = constant.model_copy(update={"decay": "cosine", "min_lr_ratio": 0.1})
    for s in range(9):  # the same warm-up
        assert cosine.lr_factor(s) == constant.lr_factor(s) == (s + 1) / 10
    assert cosine.lr_factor(9) == 1.0 and constant.lr_factor(99) == 1.0
    falling = [cosine.lr_factor(s) for s in range(9, 100)]
    assert all(a > b for a, b in zip(falling, falling[1:], strict=False))
    assert abs(cosine.lr_factor(99) - 0.1) < 1e-12
    # constant schedules keep the keys they had before the option existed; cosine changes them
    assert "decay" not in constant.key() and cosine.key()["decay"] == "cosine"
    # likewise float32, the default precision
    assert "precision" not in constant.key()
    assert constant.model_copy(update={"precision": "auto"}).key()["precision"] == "auto"
