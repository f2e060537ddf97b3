"""The one process-wide lock around torch's global state, shared by the stages that run side by
side in threads of one process (``extract`` beside ``backbone`` in a local run).

Two things there are not thread-safe:
- transformers' ``from_pretrained`` swaps ``torch.nn.init``'s functions for no-ops, process-wide,
  while it builds a model; a model initialised from scratch in another thread meanwhile keeps
  uninitialised weights;
- a seeded stage draws its initial weights (and dropout masks) from the global generators.

So every model load holds ``TORCH_STATE``, and a seeded stage holds it for its whole build. It is
re-entrant: a seeded stage loads models under it. Without torch imported (this module imports
nothing), computing keys stays cheap.
"""

from __future__ import annotations

import threading

TORCH_STATE = threading.RLock()
