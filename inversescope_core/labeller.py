"""A feature function backed by a local causal LM: it picks one label from a fixed set by
comparing the log-likelihood of each candidate as the continuation of a prompt.

    prompt   = template.format(input=text)
    score(c) = mean over c's tokens of log p(token | prompt, earlier tokens of c)
    label    = argmax_c score(c)

All (input, candidate) pairs of a call run in batches. Results are memoised in a mapping keyed
by (model id, template, candidates, input), so a persistent mapping makes relabelling free.
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from inversescope.core.lm_training import continuation_token_logprobs


class LikelihoodLabeller:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        template: str,
        labels: list[str],
        model_id: str,
        batch_size: int = 16,
        cache: MutableMapping[str, str] | None = None,
    ):
        if "{input}" not in template:
            raise ValueError(f"labeller template {template!r} has no {{input}} field")
        if len(set(labels)) < 2:
            raise ValueError(f"labeller needs at least two distinct labels, got {labels}")
        self.model, self.tokenizer = model, tokenizer
        self.template, self.labels, self.model_id = template, list(labels), model_id
        self.batch_size = batch_size
        cfg = model.config
        self.max_length = int(
            getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 1 << 30)
        )
        self.cache: MutableMapping[str, str] = {} if cache is None else cache

    def key(self, text: str) -> str:
        payload = "\x1f".join([self.model_id, self.template, *self.labels, text])
        return hashlib.sha256(payload.encode()).hexdigest()

    def __call__(self, text: str) -> str:
        return self.label_many([text])[0]

    def label_many(self, texts: list[str], on_progress=None) -> list[str]:
        """Labels of ``texts``; new ones are scored in groups and written to the cache group by
        group, so an interrupted call keeps what it computed. ``on_progress(n)`` after each."""
        todo = sorted({t for t in texts if self.key(t) not in self.cache})
        group = max(1, 8 * self.batch_size // len(self.labels))
        for g in range(0, len(todo), group):
            chunk = todo[g : g + group]
            best = self.scores(chunk).argmax(dim=1).tolist()  # (N,)
            new = {self.key(t): self.labels[i] for t, i in zip(chunk, best, strict=True)}
            if hasattr(self.cache, "update_many"):
                self.cache.update_many(new)
            else:
                self.cache.update(new)
            if on_progress is not None:
                on_progress(len(chunk))
        memo = {}
        for t in set(texts):
            memo[t] = self.cache[self.key(t)]
        return [memo[t] for t in texts]

    def scores(self, texts: list[str]) -> torch.Tensor:
        """Mean token log-likelihood of each label after each prompt.  # (N, C)"""
        pairs = [(t, c) for t in texts for c in range(len(self.labels))]  # N * C, input-major
        out = torch.empty(len(pairs))  # (N * C,)
        for b in range(0, len(pairs), self.batch_size):
            chunk = pairs[b : b + self.batch_size]
            prompts = [self.tokenizer(self.template.format(input=t))["input_ids"] for t, _ in chunk]
            conts = [
                self.tokenizer(" " + self.labels[c], add_special_tokens=False)["input_ids"]
                for _, c in chunk
            ]
            # a prompt longer than the model's context keeps its end (the input and the question)
            prompts = [
                p[max(0, len(p) + len(c) - self.max_length) :]
                for p, c in zip(prompts, conts, strict=True)
            ]
            pad = self.tokenizer.pad_token_id or 0
            logps = continuation_token_logprobs(self.model, prompts, conts, pad)
            for i, lp in enumerate(logps):
                out[b + i] = lp.mean()
        return out.view(len(texts), len(self.labels))  # (N * C,) -> (N, C)
