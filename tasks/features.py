"""Feature functions: a task's built-in ones and the user's own, named in the run config as
``{name: "package.module:function"}`` or ``{name: "/path/to/file.py:function"}``.

A feature function takes an input text and returns a hashable label, or ``None`` where the
feature is undefined (left out of FCR). Labels are stored as text: strings as they are, other
values as JSON. A task may also define *batch* features, ``fn(texts, context) -> labels``, that
need the run's context: the prior's own rows (refusal's ``harmfulness`` of a known query), the
task's data files (icl's word list) or a labeller model (refusal's ``reason`` and ``method``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import traceback
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

from inversescope.tasks import features_module_name

FeatureFn = Callable[[str], Hashable | None]
Labeller = Callable[[list[str]], list[str]]


@dataclass
class FeatureContext:
    """What batch features may use besides the texts."""

    files: tuple[Path, ...] = ()  # the prior's data files
    prior: dict[str, dict] = field(default_factory=dict)  # text -> its prior row (both splits)
    # (template with {input}, candidate labels) -> a batched labeller; None without a labeller
    labeller: Callable[[str, list[str]], Labeller] | None = None


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    module: str  # dotted module name, or a .py file path
    function: str
    batched: bool = False  # fn(texts, context) -> labels
    needs_labeller: bool = False

    @property
    def entry(self) -> str:
        """``module:function`` as the run config names it."""
        return f"{self.module}:{self.function}"

    @property
    def is_file(self) -> bool:
        return self.module.endswith(".py")

    def source_file(self) -> Path:
        if self.is_file:
            return Path(self.module).resolve()
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise ValueError(f"feature {self.name!r}: module {self.module!r} cannot be found")
        return Path(spec.origin)

    def load(self) -> FeatureFn:
        if self.is_file:
            path = Path(self.module).resolve()
            mod_name = "inversescope_user_features_" + hashlib.sha1(str(path).encode()).hexdigest()
            spec = importlib.util.spec_from_file_location(mod_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(self.module)
        fn = getattr(module, self.function, None)
        if not callable(fn):
            raise ValueError(f"feature {self.name!r}: {self.entry} is not a function")
        return fn


def parse_feature(name: str, entry: str) -> FeatureSpec:
    module, sep, function = entry.rpartition(":")
    if not sep or not module or not function.isidentifier():
        raise ValueError(
            f"feature {name!r}: {entry!r} is not of the form package.module:function or "
            "/path/to/file.py:function"
        )
    return FeatureSpec(name, module, function)


def resolve_features(
    task: str, user: dict[str, str], has_labeller: bool = False
) -> dict[str, FeatureSpec]:
    """Built-in features of ``task`` (those needing a labeller only when one is configured) plus
    the user's, each checked to exist and be callable."""
    mod_name = features_module_name(task)
    module = importlib.import_module(mod_name)
    specs = {n: FeatureSpec(n, mod_name, f.__name__) for n, f in module.FEATURES.items()}
    needs = set(getattr(module, "NEEDS_LABELLER", ()))
    for n, f in getattr(module, "BATCH_FEATURES", {}).items():
        if n not in needs or has_labeller:
            specs[n] = FeatureSpec(n, mod_name, f.__name__, batched=True, needs_labeller=n in needs)
    for name, entry in user.items():
        if name in specs:
            raise ValueError(
                f"feature name {name!r} is a built-in feature of task {task!r}; choose another name"
            )
        spec = parse_feature(name, entry)
        if spec.is_file and not Path(spec.module).is_file():
            raise ValueError(f"feature {name!r}: file {spec.module!r} does not exist")
        try:
            spec.load()
        except ValueError:
            raise
        except Exception as e:  # the user's module may raise anything while it imports
            raise ValueError(
                f"feature {name!r}: cannot load {spec.entry} ({type(e).__name__}: {e})"
            ) from e
        specs[name] = spec
    return specs


LABEL_TYPES = "str, int, float, bool, a tuple of those, or None (undefined)"


def canonical_label(value: object) -> str | None:
    """A label as stored: None stays None, a string as is, any other hashable value as JSON.
    A label names an equivalence class, so an unhashable value (a list, dict or set: usually a
    feature that returns what it computed instead of a class) is an error."""
    if value is None or isinstance(value, str):
        return value
    try:
        hash(value)
    except TypeError:
        raise TypeError(
            f"returned an unhashable {type(value).__name__} {shorten(repr(value))}; "
            f"accepted: {LABEL_TYPES}"
        ) from None
    return json.dumps(value, sort_keys=True, default=repr)


def shorten(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters for a one-line message."""
    return text if len(text) <= width else text[: width - 3] + "..."


def first_failure(first: tuple[str, BaseException, str]) -> str:
    """``first, on 'input...': raised Kind: message`` of ``apply_feature``'s first failure."""
    return f"first, on {shorten(first[0])!r}: {describe_error(first[1])}"


def describe_error(e: BaseException) -> str:
    """``raised Kind: message`` (or the label check's own words), on one line."""
    text = " ".join(str(e).split())
    if isinstance(e, TypeError | ValueError) and text.startswith("returned "):
        return text
    return f"raised {type(e).__name__}: {text}" if text else f"raised {type(e).__name__}"


def apply_feature(
    fn, texts: list[str]
) -> tuple[list[str | None], int, tuple[str, BaseException, str] | None]:
    """(labels, number of inputs that raised or gave no label, the first of them as (input,
    error, traceback))."""
    labels: list[str | None] = []
    errors, first = 0, None
    for text in texts:
        try:
            labels.append(canonical_label(fn(text)))
        except Exception as e:  # a user's function may raise anything: count it, keep going
            errors += 1
            first = first or (text, e, traceback.format_exc())
            labels.append(None)
    return labels, errors, first
