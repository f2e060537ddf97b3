"""Distances between activations and acceptance: numpy only, so the tables' readers need no
torch."""

from __future__ import annotations

import numpy as np


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos(a_i, b_i) row-wise, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return 1.0 - num / np.maximum(den, 1e-30)


def accepted(distance: np.ndarray, epsilon: float) -> np.ndarray:
    """``distance < ε``; a sample without a distance (an empty text) is refused."""
    return np.nan_to_num(np.asarray(distance, dtype=np.float64), nan=np.inf) < epsilon
