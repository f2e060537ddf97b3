"""The target's accuracy check: whole answers compared by log-likelihood."""

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
