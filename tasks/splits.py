"""Drawing a task's prompt prior: distinct prompts, split into disjoint train and test."""

from __future__ import annotations

import random
from collections.abc import Callable


def unique_splits(
    make_prompt: Callable[[random.Random], dict], n_train: int, n_test: int, seed: int
) -> tuple[list[dict], list[dict]]:
    """Draw prompts with ``make_prompt(rng)`` until ``n_train + n_test`` distinct texts; the first
    ``n_test`` are the test split. Deterministic in ``seed``; ``id`` is the row number in its
    split."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n_train + n_test:
        row = make_prompt(rng)
        if row["text"] not in seen:
            seen.add(row["text"])
            rows.append(row)
    test, train = rows[:n_test], rows[n_test:]
    for split in (train, test):
        for i, row in enumerate(split):
            row["id"] = i
    return train, test
