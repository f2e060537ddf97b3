"""Ancestral sampling with a KV cache, from ``<eos>`` until ``<eos>``, for any causal LM.

Conditioning enters either through hooks already set on the model (the control layers) or
through a prefilled cache (the InversionView prefix); the loop is the same.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel


@torch.no_grad()
def sample_tokens(
    model: PreTrainedModel,
    batch: int,
    eos_id: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    cache: DynamicCache | None = None,
    stop_at_eos: bool = True,
) -> torch.Tensor:
    """Sampled token ids (B, <= max_new_tokens), starting after ``eos_id`` (which begins every
    sequence); rows end at their first ``eos_id``, after which they are padded with it.
    ``stop_at_eos=False`` always samples ``max_new_tokens`` (for benchmarks)."""
    device = next(model.parameters()).device
    cache = cache if cache is not None else DynamicCache(config=model.config)
    prefix = cache.get_seq_length()
    tok = torch.full((batch, 1), eos_id, dtype=torch.long, device=device)  # (B, 1)
    mask = torch.ones(batch, prefix + 1, dtype=torch.long, device=device)  # (B, prefix + 1)
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # (B,)
    out_tokens: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        pos = torch.full((batch, 1), step, dtype=torch.long, device=device)  # (B, 1)
        out = model(
            input_ids=tok, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
        )
        cache = out.cache
        probs = torch.softmax(out.logits[:, -1].float() / temperature, dim=-1)  # (B, V)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
        if stop_at_eos:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        out_tokens.append(nxt)
        if bool(done.all()):
            break
        tok = nxt[:, None]  # (B, 1)
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)  # (B, prefix + step + 2)
    return torch.stack(out_tokens, dim=1)  # (B, steps)


def decode(tokenizer, ids: torch.Tensor, eos_id: int) -> list[str]:
    """Texts of sampled rows, cut at the first end-of-text token."""
    texts = []
    for row in ids.tolist():
        if eos_id in row:
            row = row[: row.index(eos_id)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts
