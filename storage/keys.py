"""Cache keys: a hash of a stage's config, the keys of the artifacts it reads, and the source
of the code it runs.

Prefect's ``TASK_SOURCE`` hashes only a task function's own source, so we hash the stage's
module and the project modules its build runs, found with ``ast`` (no import side effects):
every project module the stage module imports, anywhere in it (its functions defer heavy
imports), and from there the modules each one imports at module level, transitively. An import
inside a function of a lower module (``storage.layout`` loads ``core.methods`` only to read a
checkpoint) is not followed: a stage that calls such a function names the module in its
``CODE``. ``tests/flows/test_key_coverage.py`` traces every stage's build and checks that each
project module whose code ran is in its key.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inversescope.core.config import ModelSourceConfig

PACKAGE = "inversescope"
KEY_CHARS = 16


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports(path: Path, module: str, everywhere: bool = False) -> set[str]:
    """Project modules imported by the source at ``path`` (absolute or relative imports): at
    module level, or (``everywhere``) also inside functions.

    ``from pkg import name`` counts ``pkg.name`` only when ``pkg`` is a package: looking up
    ``module.attribute`` would import ``module`` (and torch with it) just to find out.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(tree, everywhere):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = importlib.util.resolve_name("." * node.level + base, package)
            found.add(base)
            if _is_project(base) and _is_package(base):
                found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if _is_project(m)}


def _is_project(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _is_package(name: str) -> bool:
    path = _module_file(name)
    return path is not None and path.name == "__init__.py"


def _runtime_nodes(tree: ast.AST, everywhere: bool):
    """Every node that runs when the module loads (``everywhere``: also in its functions and
    methods), except what sits under ``if TYPE_CHECKING:`` (imports for annotations only: they
    run no code, so they must not widen a stage's key)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                todo.extend(child.orelse)
                continue
            if not everywhere and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            todo.append(child)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@cache
def module_closure(*modules: str) -> tuple[tuple[str, Path], ...]:
    """``modules``, the project modules they import anywhere (in functions too), and the
    modules those import at module level, transitively; with their files, sorted."""
    seen: dict[str, Path] = {}
    todo: list[str] = []
    for name in modules:  # the roots first: their function bodies count
        path = _module_file(name)
        if path is not None:
            seen[name] = path
            todo.extend(_imports(path, name, everywhere=True))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imports(path, name) - seen.keys())
    return tuple(sorted(seen.items()))


def code_hash(modules: tuple[str, ...], extra_files: tuple[Path, ...] = ()) -> str:
    """Hash of the source of ``modules``, everything they import from the project, and files."""
    h = hashlib.sha256()
    for name, path in module_closure(*modules):
        h.update(name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    for path in sorted(extra_files):
        h.update(str(path).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def stage_key(stage: str, config: Any, inputs: dict[str, str], code: str) -> str:
    """The cache key of one stage run: short hex of (stage, config, input keys, code hash)."""
    payload = canonical_json({"stage": stage, "config": config, "inputs": inputs, "code": code})
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_CHARS]


def file_fingerprint(path: Path) -> str:
    """Fingerprint of a file or a directory (a Path's string is not enough to key a cache: the
    files behind it can change).

    A file: its content hash (data files and feature modules are small). A directory (a model
    saved with save_pretrained, gigabytes): the relative name, size and modification time
    (ns) of every file under it, never their content, so a run start costs one ``stat`` per
    file. Rewriting a file changes its mtime and so the key; a copy that keeps mtimes
    (``cp -a``, ``rsync -a``) keeps the key, a copy that does not (plain ``cp``) gets a new
    one and rebuilds."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    h.update(path.name.encode())
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_fingerprint(source: ModelSourceConfig) -> dict[str, Any]:
    """What identifies a hub or local model in a cache key: the hub name and revision, or the
    local directory's files (names, sizes and mtimes, see ``file_fingerprint``; its path alone
    is not enough)."""
    if source.source == "local":
        assert source.path is not None
        return {
            "source": "local",
            "path": str(source.path),
            "content": file_fingerprint(source.path),
        }
    return {"source": source.source, "name": source.name, "revision": source.revision}
