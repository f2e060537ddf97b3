"""Feature consistency rate (FCR) and its uncertainty.

    FCR(f) = E_(x_hat, z_hat) E_(x ~ P(x; z_hat)) 1{f(x) = f(x_hat)}

The inner expectation is estimated per reference example from its samples, weighted by the
kernel: the hard kernel keeps accepted samples with weight 1 (distance < ε), the Gaussian one
weighs every sample by exp(-d² / 2ε²). Undefined labels (None) drop out: a sample with no label
is not counted, an example whose own label is undefined or that keeps no weight is left out.
The outer expectation is the mean over the remaining examples; its 95 % interval comes from a
bootstrap over examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def kernel_weights(distance: np.ndarray, epsilon: float, weighting: str) -> np.ndarray:
    """Weight of each sample in FCR: hard 1{d < ε}; gaussian exp(-d²/2ε²). NaN distance weighs
    0."""
    d = np.asarray(distance, dtype=np.float64)
    if weighting == "hard":
        w = (d < epsilon).astype(np.float64)
    elif weighting == "gaussian":
        w = np.exp(-(d**2) / (2 * epsilon**2))
    else:
        raise ValueError(f"unknown weighting {weighting!r}; accepted: hard, gaussian")
    return np.where(np.isnan(d), 0.0, w)


@dataclass(frozen=True)
class FcrEstimate:
    fcr: float
    ci_low: float
    ci_high: float
    n_examples: int  # examples that contribute
    n_samples: int  # samples with non-zero weight and a defined label in those examples


def per_example_consistency(
    example: np.ndarray, match: np.ndarray, defined: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(example ids, weighted share of matching labels, sample count) for each example that keeps
    positive weight among samples with a defined label."""
    w = np.where(defined, weight, 0.0)
    ids, inv = np.unique(example, return_inverse=True)
    total = np.bincount(inv, weights=w, minlength=len(ids))
    hits = np.bincount(inv, weights=w * match, minlength=len(ids))
    count = np.bincount(inv, weights=(w > 0).astype(np.float64), minlength=len(ids))
    keep = total > 0
    return ids[keep], hits[keep] / total[keep], count[keep].astype(np.int64)


def bootstrap_ci(values: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` under resampling with replacement."""
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def estimate_fcr(
    example: np.ndarray,
    sample_label: np.ndarray,
    reference_label: np.ndarray,
    weight: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> FcrEstimate:
    """FCR from one row per sample: its example id, its label, its example's label (object
    arrays, None = undefined) and its kernel weight."""
    defined = np.array(
        [
            s is not None and r is not None
            for s, r in zip(sample_label, reference_label, strict=True)
        ],
        dtype=bool,
    )
    match = np.array(
        [d and s == r for d, s, r in zip(defined, sample_label, reference_label, strict=True)],
        dtype=np.float64,
    )
    _, share, count = per_example_consistency(example, match, defined, weight)
    if len(share) == 0:
        return FcrEstimate(float("nan"), float("nan"), float("nan"), 0, 0)
    low, high = bootstrap_ci(share, n_boot, level, seed)
    return FcrEstimate(float(share.mean()), low, high, len(share), int(count.sum()))


def chance_level(reference_labels: list, pool_labels: list) -> float:
    """FCR that samples drawn from the prior alone would get: for each reference label, the share
    of defined labels in a pool of prior draws that equal it, averaged over references whose
    label is defined."""
    pool = [p for p in pool_labels if p is not None]
    refs = [r for r in reference_labels if r is not None]
    if not pool or not refs:
        return float("nan")
    values, counts = np.unique(np.array(pool, dtype=object).astype(str), return_counts=True)
    freq = dict(zip(values.tolist(), (counts / counts.sum()).tolist(), strict=True))
    return float(np.mean([freq.get(str(r), 0.0) for r in refs]))


@dataclass(frozen=True)
class FeatureScore:
    """FCR of one feature at one site, with the chance level of the references it covers."""

    feature: str
    estimate: FcrEstimate
    chance: float


def score_site(
    example: np.ndarray,
    weight: np.ndarray,
    sample_labels: dict[str, list],
    reference_labels: dict[str, dict[int, object]],
    pool: dict[str, list],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[FeatureScore]:
    """Every feature's FCR at one site. One row per sample: its example id (``example``), its
    kernel weight and, per feature, its label (``sample_labels``). ``reference_labels`` maps a
    feature to {example id: the reference's label}; ``pool`` to the labels of the prior draws
    chance compares with (every reference)."""
    used = sorted(set(example.tolist()))
    out = []
    for f, labels in sample_labels.items():
        ref = reference_labels[f]
        est = estimate_fcr(
            example,
            np.array(labels, dtype=object),
            np.array([ref.get(e) for e in example.tolist()], dtype=object),
            weight,
            n_boot,
            level,
            seed,
        )
        out.append(FeatureScore(f, est, chance_level([ref.get(e) for e in used], pool[f])))
    return out
