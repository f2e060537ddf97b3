"""torch and the threads of one process: the one process-wide lock around torch's global state,
shared by the stages that run side by side (``extract`` beside ``backbone`` in a local run), and
the short-lived thread each build runs in (``in_own_thread``).

Two things there are not thread-safe:
- transformers' ``from_pretrained`` swaps ``torch.nn.init``'s functions for no-ops, process-wide,
  while it builds a model; a model initialised from scratch in another thread meanwhile keeps
  uninitialised weights;
- a seeded stage draws its initial weights (and dropout masks) from the global generators.

So every model load holds ``TORCH_STATE``, and a seeded stage holds it for its whole build. It is
re-entrant: a seeded stage loads models under it. Without torch imported (this module imports
only the standard library), computing keys stays cheap.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TORCH_STATE = threading.RLock()


def in_own_thread(fn: Callable[[], T]) -> T:
    """Call ``fn`` in a thread started for it and return its result (or raise its exception),
    so that the OpenMP thread pool it makes goes when it returns.

    torch's CPU kernels run on GNU OpenMP, which keeps one pool of worker threads for every
    thread that ever entered a parallel region, until that thread exits. Once the pools' workers
    outnumber the cores, every idle worker sleeps in the kernel after about 100 spins instead of
    300,000, and each of the thousands of small parallel regions of a training step waits for a
    wake-up. A local run builds its stages in Prefect's worker threads, which live as long as
    the flow: by the controls stage, the target's, extract's and backbone's pools were still
    there, and it trained at 4.1 steps a second instead of 6.5 (benchmarks/README.md). From the
    main thread (the library, a notebook) ``fn`` runs in place: there one pool serves every
    stage, and an interrupt stops the build itself.

    The thread runs in a copy of the caller's context (Prefect's run context, our progress
    reporting) and is not a daemon: like the worker it replaces, it finishes its build (or is
    killed with the process) before the interpreter exits."""
    if threading.current_thread() is threading.main_thread():
        return fn()
    context = contextvars.copy_context()
    out: list[T] = []
    failed: list[BaseException] = []

    def target() -> None:
        try:
            out.append(context.run(fn))
        except BaseException as exc:  # handed to the caller, which re-raises it
            failed.append(exc)

    worker = threading.Thread(target=target, name=f"{threading.current_thread().name}-build")
    worker.start()
    worker.join()
    if failed:
        raise failed[0]
    return out[0]
