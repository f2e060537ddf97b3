"""What the generators see of an activation: its direction.

Acceptance is by cosine distance, which ignores an activation's norm, and raw norms differ per
site by 10x or more (0.15 to 1.0 on ioi-tiny's sites): a conditioning path fed raw ``z`` gets
inputs far smaller than its initialisation expects, and InversionView's site embedding (norm
about sqrt(d)) drowns it. Both generators therefore read ``z / ||z|| * sqrt(d)``: the direction,
at unit root-mean-square, so its scale matches a layer norm's output. Training noise is added to
the raw ``z`` before this (the data pipeline adds it; the model normalises).
"""

from __future__ import annotations

import math

import torch


def direction(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``z / ||z|| * sqrt(d)`` row-wise.  # (B, d) -> (B, d)"""
    return z * (math.sqrt(z.shape[-1]) / z.norm(dim=-1, keepdim=True).clamp_min(eps))
