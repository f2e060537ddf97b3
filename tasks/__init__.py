"""Interpretability tasks (one module each) and the presets that ship with the package.

Task modules are imported lazily by name, so a stage's cache key depends only on the source of
the task it runs. A task module provides ``NAME``, ``generate_prior(n_train, n_test, seed)`` and
``FEATURES`` (name -> feature function).
"""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path
from types import ModuleType

TASKS: tuple[str, ...] = ("ioi", "icl")


def task_module_name(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
    return f"{__name__}.{task}"


def load_task(task: str) -> ModuleType:
    return importlib.import_module(task_module_name(task))


def _preset_dir() -> Path:
    return Path(str(resources.files(__name__) / "presets"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in _preset_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = _preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; accepted: {', '.join(preset_names())}")
    return path
