"""Inverting activations: sample inputs for given activations at a site, and measure them.

``Inverter`` holds a trained generator (its sampling method and model on a backbone) and the
target with its site readers. For reference activations ``z_hat`` (N, d) at one site it draws
one text per row with the method, decodes it, re-reads it with the target exactly as
extraction reads prompts (``tokenizer(render(text))``, last token) and returns each text with
its cosine distance to its ``z_hat`` row. Whether a sample is *accepted* (distance < ε) is
decided by whoever reads the distances: a sample does not depend on ε.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from inversescope.core.config import KernelConfig, SampleConfig
from inversescope.core.distance import cosine_distance
from inversescope.core.extract import SiteReader
from inversescope.core.methods import SamplingMethod
from inversescope.core.sampling import decode


@dataclass
class Inverter:
    """A trained generator and the target it inverts, loaded once."""

    method: SamplingMethod
    model: torch.nn.Module | None  # the method's trained part (None: the prior)
    backbone: torch.nn.Module
    tokenizer: object  # the backbone's
    target: torch.nn.Module
    target_tokenizer: object
    render: Callable[[str], str] | None = None  # what the target reads for a text
    read_batch: int = 64  # texts per target forward pass

    def __post_init__(self):
        self._readers: dict[str, SiteReader] = {}

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def sites(self) -> list[str] | None:
        """The sites the generator was trained on (None: any, nothing was trained)."""
        return getattr(self.model, "sites", None)

    def reader(self, site: str) -> SiteReader:
        if site not in self._readers:
            self._readers[site] = SiteReader(
                self.target, self.target_tokenizer, [site], render=self.render
            )
        return self._readers[site]

    def activations(self, texts: list[str], site: str) -> np.ndarray:
        """The target's activation of each text at ``site``, at its last token.  # (N, d)"""
        reader = self.reader(site)
        out = [
            reader.read(texts[b : b + self.read_batch])[site].numpy()
            for b in range(0, len(texts), self.read_batch)
        ]
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def measure(self, texts: list[str], z_hat: np.ndarray, site: str) -> np.ndarray:
        """Cosine distance of each text's own activation at ``site`` to its ``z_hat`` row (NaN
        for an empty text: it has no last token)."""
        out = np.full(len(texts), np.nan)
        idx = [i for i, t in enumerate(texts) if t]
        if idx:
            acts = self.activations([texts[i] for i in idx], site)  # (len(idx), d)
            out[idx] = cosine_distance(acts, z_hat[idx])
        return out

    def site_index(self, site: str) -> int:
        """The site's row in the trained model's own site list (the checkpoint's)."""
        own = self.sites
        if own is None:  # nothing trained: the index is unused
            return 0
        if site not in own:
            raise ValueError(f"site {site!r} was not trained by this generator; trained: {own}")
        return own.index(site)

    def generate(
        self,
        z_hat: np.ndarray,
        site: str,
        settings: SampleConfig,
        kernel: KernelConfig,
        seed: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[str]:
        """One sampled text per row of ``z_hat`` (N, d), in batches of ``settings.batch_size``,
        from random streams seeded by ``seed`` alone."""
        index = self.site_index(site)
        eos = self.tokenizer.eos_token_id  # type: ignore[attr-defined]
        streams = self.method.streams(seed, kernel, z_hat.shape[1], self.device)
        texts: list[str] = []
        for b in range(0, len(z_hat), settings.batch_size):
            z = torch.from_numpy(np.ascontiguousarray(z_hat[b : b + settings.batch_size]))
            z = z.to(self.device)  # (B, d)
            site_idx = torch.full((len(z),), index, device=self.device)  # (B,)
            with torch.no_grad():
                ids = self.method.generate(
                    self.model, self.backbone, z, site_idx, streams, settings, eos
                )  # (B, <= max_new_tokens)
            texts += decode(self.tokenizer, ids, eos)
            if on_batch is not None:
                on_batch(len(z))
        return texts

    def sample(
        self,
        z_hat: np.ndarray,
        site: str,
        settings: SampleConfig,
        kernel: KernelConfig,
        seed: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[list[str], np.ndarray]:
        """(texts, their distances to their ``z_hat`` rows): one sample per row."""
        z_hat = np.asarray(z_hat, dtype=np.float32)
        if z_hat.ndim != 2:
            raise ValueError(f"z_hat must be (N, d), got shape {z_hat.shape}")
        texts = self.generate(z_hat, site, settings, kernel, seed, on_batch)
        return texts, self.measure(texts, z_hat, site)
