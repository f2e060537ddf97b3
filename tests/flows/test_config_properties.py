"""Property test of the run config's checks: random ``--set`` overrides over every field,
valid and invalid, each give a valid config (whose run-level checks and stage keys then pass
too) or one line that names the field. Never a traceback, never a crash left for a stage."""

import json
import types
import typing

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from inversescope.config import ConfigError, RunConfig, check_run, load_run_config
from inversescope.flows.stage import run_keys


def _model_of(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [_model_of(a) for a in typing.get_args(annotation)]
        models = [m for m in models if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def field_paths(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """Every field's dotted path (sections too: they can be set, rightly or not) and type."""
    out = {}
    for name, info in model.model_fields.items():
        sub = _model_of(info.annotation)
        path = f"{prefix}{name}"
        out[path] = info.annotation
        if sub is not None:
            out.update(field_paths(sub, f"{path}."))
    return out


FIELDS = field_paths(RunConfig)
PATHS = sorted(FIELDS)
BASE = load_run_config("ioi-tiny").model_dump(mode="json")


def _current(path: str):
    value = BASE
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def plausible(path: str) -> st.SearchStrategy:
    """Values of the field's own kind near the preset's: most of them valid."""
    literals = [a for a in typing.get_args(FIELDS[path]) if typing.get_origin(a) is typing.Literal]
    if typing.get_origin(FIELDS[path]) is typing.Literal or literals:
        ann = FIELDS[path] if typing.get_origin(FIELDS[path]) is typing.Literal else literals[0]
        return st.sampled_from(typing.get_args(ann))
    v = _current(path)
    if isinstance(v, bool):
        return st.booleans()
    if isinstance(v, int):
        return st.integers(min_value=max(0, v // 4), max_value=2 * v + 2)
    if isinstance(v, float):
        return st.floats(min_value=0.0, max_value=2 * v + 0.5)
    if isinstance(v, list) and v and isinstance(v[0], str):  # sites
        return st.lists(st.sampled_from(v), min_size=1, max_size=4, unique=True)
    return values


WRONG = [  # old names, unknown fields, wrong nesting
    "kernel.kernel",
    "fcr.kernel",
    "sample.block_examples",
    "controls.generator.backbone",
    "extract.nope",
    "nope",
    "target.arch.n_layer.deeper",
    "kernel.epsilon.x",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.sampled_from([0, 1, 2, 3, -1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "L0H1", "L9H9", "L1.attn", "héad", "hub", "local", "train", "cosine",
                     "hard", "gaussian", "frozen", "full", "lora", "cuda:7", "auto", "cpu"]),
)  # fmt: skip
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.sampled_from(["a", "n_layer", "epsilon", "x"]), scalars, max_size=2),
)


def assignment(path: str, value) -> str:
    return f"{path}={json.dumps(value, allow_nan=True)}"


one_override = st.one_of(
    st.sampled_from(PATHS).flatmap(lambda p: plausible(p).map(lambda v: (p, assignment(p, v)))),
    st.tuples(st.sampled_from([*PATHS, *WRONG]), values).map(lambda pv: (pv[0], assignment(*pv))),
)
overrides = st.lists(one_override, min_size=1, max_size=3)


def _named(message: str, paths: list[str]) -> bool:
    """The message names one of the fields set (its last part, or its section)."""
    parts = {p for path in paths for p in path.split(".")}
    return any(p in message for p in parts)


def test_there_are_many_fields():
    assert len(PATHS) > 80


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(overrides)
def test_any_override_gives_a_valid_config_or_one_line_naming_the_field(small, sets):
    paths = [p for p, _ in sets]
    try:
        run = load_run_config("ioi-tiny", [*small, *(a for _, a in sets)])
        check_run(run)
        run_keys(run)  # every stage's config_of: what a stage's own checks would see first
        event("valid")
    except ConfigError as e:
        event("refused")
        message = str(e)
        assert "\n" not in message, message
        assert _named(message, paths), (paths, message)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"{[a for _, a in sets]} raised {type(e).__name__}: {e}")
