"""The dependency direction of the design card: flows -> (tasks, storage) -> core, and no stage
module imports another."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"flows": "flows", "storage": "storage", "tasks": "tasks", "inversescope_core": "core"}
PUBLIC_FACE = tuple(
    f"inversescope.{p.stem}" for p in (ROOT / "inversescope").glob("*.py") if p.stem != "__init__"
)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("path", _modules("flows"), ids=lambda p: p.name)
def test_no_stage_imports_another_stage(path):
    if not path.name.startswith("stage_"):
        return
    others = {
        m
        for m in _imports(path)
        if m.startswith("inversescope.flows.stage_") and m.split(".")[2] != path.stem
    }
    assert not others, f"{path.name} imports {others}"


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        (
            "inversescope_core",
            (
                "inversescope.flows",
                "inversescope.storage",
                "inversescope.tasks",
                "prefect",
                "zarr",
                "polars",
                *PUBLIC_FACE,
            ),
        ),
        ("storage", ("inversescope.flows", "prefect", *PUBLIC_FACE)),
        ("tasks", ("inversescope.flows", "inversescope.storage", "prefect", *PUBLIC_FACE)),
        # the API and the library it shares with the stages: never Prefect
        ("inversescope", ("inversescope.flows", "prefect")),
    ],
)
def test_nothing_imports_upward(folder, forbidden):
    bad = {
        f"{p.name}: {m}" for p in _modules(folder) for m in _imports(p) if m.startswith(forbidden)
    }
    assert not bad, bad
