"""Interpretability tasks (one module each) and the presets that ship with the package.

Task modules are imported lazily by name, so a stage's cache key depends only on the source of
the task it runs. A task module ``<task>`` provides ``NAME`` and ``generate_prior(n_train,
n_test, seed, options)``; its built-in features live apart, in ``<task>_features`` (which the
prior's key does not cover, so editing a feature reruns only ``label`` and ``fcr``), as
``FEATURES`` (name -> feature function of one text) and optionally ``BATCH_FEATURES`` (name ->
``fn(texts, context) -> labels``, features that need the prior's own labels or a labeller model,
see ``tasks.features.FeatureContext``; the names in ``NEEDS_LABELLER`` exist only when the run
configures a labeller). A task module may also provide:

- ``render(text, tokenizer) -> str``: the string the target reads for an input text (refusal:
  the chat template with a generation prompt); without it the target reads the text itself.
- ``CHAT_TEMPLATE``: the chat template given to a target trained here.
- ``check_files(paths)``: raises ``ValueError`` when the task's data files do not fit.
- ``PRIOR_USES_TOKENIZER``: the prior depends on the target's tokenizer (a length filter).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType

TASKS: tuple[str, ...] = ("ioi", "icl", "refusal")
DATA_PREFIX = "data:"


@dataclass(frozen=True)
class PriorOptions:
    """What a task's prior may use beyond sizes and seed."""

    files: tuple[Path, ...] = ()
    max_tokens: int = 60
    count_tokens: Callable[[str], int] | None = None  # target tokens of a text, when known


def task_module_name(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
    return f"{__name__}.{task}"


def features_module_name(task: str) -> str:
    """The module of a task's built-in feature functions."""
    return f"{task_module_name(task)}_features"


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


def data_dir() -> Path:
    return Path(str(resources.files(__name__) / "data"))


def resolve_data_file(spec: str) -> Path:
    """A task data file: ``data:NAME`` names a file shipped with the package, anything else is a
    path. Raises ``ValueError`` naming the file when it does not exist."""
    if spec.startswith(DATA_PREFIX):
        name = spec[len(DATA_PREFIX) :]
        path = data_dir() / name
        if not path.is_file():
            shipped = sorted(p.name for p in data_dir().iterdir() if p.is_file())
            raise ValueError(f"prior.files: {spec!r} is not shipped; accepted: {shipped}")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(f"prior.files: {spec!r} does not exist (missing file)")
    return path.resolve()


def task_renderer(task: str, tokenizer, prefix: str = "") -> Callable[[str], str] | None:
    """The function giving the string the target reads for an input text: the task's rendering
    (refusal: the chat template), after ``prefix`` (a target trained here reads ``<eos>`` first).
    None when the target reads the text itself."""
    render = getattr(load_task(task), "render", None)
    if render is None:
        return (lambda text: prefix + text) if prefix else None
    return lambda text: prefix + render(text, tokenizer)
