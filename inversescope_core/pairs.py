"""Training pairs of the conditional generator: batches of (tokens of x_hat, z_hat + r, site).

``ActivationBatches`` reads activations through a plain function, ``read(site, start, stop) ->
(rows, d) float32``, one row chunk of every site at a time, in shuffled chunk order, and mixes
sites in every batch. Its position (the generators, the chunk order, the pairs left in the
current chunk) is checkpointable, so a resumed training sees exactly the batches an
uninterrupted one would. Peak memory is one chunk of every site, whatever the number of rows,
plus the token ids of every prompt visited, encoded once (about 260 bytes an IOI prompt: 26 MB
at 100,000).

A visit to a chunk yields each of its rows at every site (the default), or, with
``sites_per_row = m`` below the S sites, at m sites drawn for that row and visit: a chunk then
lasts S / m times fewer steps, so a budget of steps meets S / m times more distinct prompts (at
the 192,000 pairs of ``ioi-tiny``, 1500 steps of 128, 20 sites and 2048-row chunks: 9,600
prompts at all 20 sites each, or 48,000 at 4). With m at least S, every row meets every site,
as without the option.

With ``length_groups = g``, every run of g batches of the shuffled pairs is sorted by the
length of its prompts, cut into g batches again, and those g batches are shuffled: each batch
then holds prompts of about one length and pads little (ioi-tiny: 79.5 % of a random batch's
positions are tokens, 97.5 % at g = 8), while every pair is still seen once per visit.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from inversescope.core.lm_training import lm_ids, padded_batch

ReadRows = Callable[[str, int, int], np.ndarray]


class ActivationBatches:
    """Endless batches ``{input_ids, attention_mask, labels, z (B, d), site_idx (B,)}``."""

    def __init__(
        self,
        read: ReadRows,
        n_rows: int,
        chunk_rows: int,
        sites: list[str],
        texts: list[str],
        tokenizer,
        batch_size: int,
        seed: int,
        noise=None,
        sites_per_row: int | None = None,
        length_groups: int | None = None,
    ):
        if len(texts) != n_rows:
            raise ValueError(f"{len(texts)} texts for {n_rows} activation rows")
        if sites_per_row is not None and sites_per_row < 1:
            raise ValueError(f"sites_per_row={sites_per_row}: at least 1 site")
        if length_groups is not None and length_groups < 1:
            raise ValueError(f"length_groups={length_groups}: at least 1 batch")
        if sites_per_row is not None and sites_per_row >= len(sites):
            sites_per_row = None  # every row at every site, as without the option
        self.sites_per_row, self.length_groups = sites_per_row, length_groups
        self.read, self.sites, self.texts = read, sites, texts
        self.tokenizer, self.batch_size, self.noise = tokenizer, batch_size, noise
        self.rng = random.Random(seed)
        self._ids: dict[int, list[np.ndarray]] = {}  # chunk start -> its rows' tokens (derived)
        self.step = chunk_rows
        self.starts = list(range(0, n_rows, chunk_rows))
        self.pos = len(self.starts)  # the first call starts an epoch
        self.start = -1  # the row chunk now read (-1: none)
        self.pairs: list[tuple[int, int]] = []  # (row in chunk, site index), shuffled
        self.i = 0  # pairs already batched
        self.chunk: np.ndarray | None = None  # (S, R, d): the chunk's rows at every site

    def __iter__(self) -> ActivationBatches:
        return self

    def _read(self, start: int) -> None:
        self.start = start
        self.chunk = np.stack([self.read(s, start, start + self.step) for s in self.sites])

    def __next__(self) -> dict[str, torch.Tensor]:
        while self.i + self.batch_size > len(self.pairs):
            if self.pos >= len(self.starts):
                self.rng.shuffle(self.starts)
                self.pos = 0
            self._read(self.starts[self.pos])
            self.pos += 1
            n_rows = self.chunk.shape[1]  # type: ignore[union-attr]
            n_sites = len(self.sites)
            if self.sites_per_row is None:  # every row at every site
                self.pairs = [(r, s) for r in range(n_rows) for s in range(n_sites)]
            else:  # every row at sites_per_row sites of its own
                m = self.sites_per_row
                self.pairs = [
                    (r, s) for r in range(n_rows) for s in self.rng.sample(range(n_sites), m)
                ]
            self.rng.shuffle(self.pairs)
            if self.length_groups is not None:
                self.pairs = self._by_length(self.pairs)
            self.i = 0
        assert self.chunk is not None
        picked = self.pairs[self.i : self.i + self.batch_size]
        self.i += self.batch_size
        rows = [r for r, _ in picked]
        site_idx = torch.tensor([s for _, s in picked])  # (B,)
        z = torch.from_numpy(self.chunk[site_idx.numpy(), rows])  # (B, d)
        if self.noise is not None:
            z = z + self.noise(z)
        ids = self._chunk_ids()
        batch = padded_batch([ids[r] for r in rows], self.tokenizer.pad_token_id)
        return {**batch, "z": z, "site_idx": site_idx}

    def _chunk_ids(self) -> list[np.ndarray]:
        """The current chunk's prompts as ``lm_batch`` rows, encoded once per run: a visit
        pairs each row with several sites, and the tokenizer's call cost a step 6 ms."""
        if self.start not in self._ids:
            texts = [self.texts[self.start + r] for r in range(self.chunk.shape[1])]
            self._ids[self.start] = lm_ids(self.tokenizer, texts)
        return self._ids[self.start]

    def _by_length(self, pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Each run of ``length_groups`` batches sorted by prompt length (ties keep the shuffled
        order), cut into batches, the batches of the run shuffled."""
        lengths = [len(ids) for ids in self._chunk_ids()]
        b, run = self.batch_size, self.batch_size * self.length_groups
        out: list[tuple[int, int]] = []
        for i in range(0, len(pairs), run):
            group = sorted(pairs[i : i + run], key=lambda p: lengths[p[0]])
            batches = [group[j : j + b] for j in range(0, len(group), b)]
            self.rng.shuffle(batches)
            out.extend(p for batch in batches for p in batch)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.getstate(),
            "starts": list(self.starts),
            "pos": self.pos,
            "start": self.start,
            "pairs": list(self.pairs),
            "i": self.i,
            "noise": self.noise.state_dict() if self.noise is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.starts, self.pos = list(state["starts"]), state["pos"]
        self.pairs, self.i = [tuple(p) for p in state["pairs"]], state["i"]
        if state["start"] >= 0:
            self._read(state["start"])
        if self.noise is not None:
            self.noise.load_state_dict(state["noise"])
