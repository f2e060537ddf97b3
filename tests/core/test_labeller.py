"""The LLM labeller's mechanics on a tiny random model."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from inversescope.core.labeller import LikelihoodLabeller

LABELS = ["violence", "fraud", "privacy"]
TEMPLATE = "Query: {input}\nCategory:"


@pytest.fixture()
def labeller(tiny_tokenizer):
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=2, n_head=2, n_embd=32, vocab_size=len(tiny_tokenizer), initializer_range=0.5
        )
    ).eval()
    return LikelihoodLabeller(model, tiny_tokenizer, TEMPLATE, LABELS, "tiny", batch_size=4)


def loglik(model, tok, prompt, label):
    p = tok(prompt)["input_ids"]
    c = tok(" " + label, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0], -1)
    return float(torch.stack([logp[len(p) - 1 + j, t] for j, t in enumerate(c)]).mean())


def test_batched_scores_equal_one_by_one(labeller, tiny_tokenizer):
    texts = ["When Mary and John went to the store", "hello", "a longer query about a bag"]
    scores = labeller.scores(texts)
    for i, text in enumerate(texts):
        for j, label in enumerate(LABELS):
            want = loglik(labeller.model, tiny_tokenizer, TEMPLATE.format(input=text), label)
            assert scores[i, j].item() == pytest.approx(want, abs=1e-4)
    got = labeller.label_many(texts)
    assert got == [LABELS[int(scores[i].argmax())] for i in range(len(texts))]


def test_cache_makes_relabelling_free(labeller):
    calls = []
    labeller.model.register_forward_hook(lambda *a: calls.append(1))
    first = labeller.label_many(["x y", "z"])
    n = len(calls)
    assert n > 0 and labeller("x y") == first[0] and len(calls) == n
    assert len(labeller.cache) == 2
    other = LikelihoodLabeller(labeller.model, labeller.tokenizer, TEMPLATE, LABELS, "other")
    assert other.key("x y") != labeller.key("x y")  # keyed by model, prompt and input


def test_bad_labeller_config(labeller):
    with pytest.raises(ValueError, match="no \\{input\\} field"):
        LikelihoodLabeller(labeller.model, labeller.tokenizer, "no slot", LABELS, "m")
    with pytest.raises(ValueError, match="two distinct labels"):
        LikelihoodLabeller(labeller.model, labeller.tokenizer, TEMPLATE, ["a", "a"], "m")


def test_persistent_cache_survives_a_new_labeller(labeller, tmp_path):
    from inversescope.storage.label_cache import SqliteCache

    path = tmp_path / "memo.sqlite"
    first = LikelihoodLabeller(
        labeller.model, labeller.tokenizer, TEMPLATE, LABELS, "tiny", 4, SqliteCache(path)
    )
    texts = ["a b", "c", "a b", "d e f"]
    want = first.label_many(texts)
    assert want == labeller.label_many(texts)  # same answers as the in-memory memo
    calls = []
    labeller.model.register_forward_hook(lambda *a: calls.append(1))
    again = LikelihoodLabeller(
        labeller.model, labeller.tokenizer, TEMPLATE, LABELS, "tiny", 4, SqliteCache(path)
    )
    assert again.label_many(texts) == want and calls == []
    assert len(SqliteCache(path)) == 3


def test_prompt_longer_than_the_context_keeps_its_end(tiny_tokenizer):
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=24, vocab_size=len(tiny_tokenizer))
    ).eval()
    lab = LikelihoodLabeller(model, tiny_tokenizer, TEMPLATE, LABELS, "short", batch_size=2)
    long_text = " ".join(["Mary and John went to the store"] * 10)
    scores = lab.scores([long_text])  # would index past 24 positions without truncation
    assert scores.shape == (1, len(LABELS)) and torch.isfinite(scores).all()
