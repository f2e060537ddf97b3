"""Artifact directories that become visible only when complete.

Layout: ``<workdir>/<stage>/<key>/`` holds the artifact and, written last, ``manifest.json``.
A stage builds in ``<workdir>/<stage>/.partial-<key>/``, renames it into place, then writes the
manifest; a cache hit needs a valid manifest, so "the folder exists" never means "done".
A per-key lock file keeps two runs from building the same artifact at once. A resumable stage
keeps its partial directory across a crash and picks it up on the next run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from inversescope.core.faults import fault_point

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_VERSIONED = ("inversescope", "torch", "transformers", "nnsight", "zarr", "polars", "prefect")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to a hidden temporary file, fsync it, then ``os.replace`` it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class Artifact:
    stage: str
    key: str
    path: Path
    manifest: dict[str, Any]


class ArtifactStore:
    """All artifacts of one working directory."""

    def __init__(self, workdir: Path | str):
        self.workdir = Path(workdir)

    def path(self, stage: str, key: str) -> Path:
        return self.workdir / stage / key

    def partial_path(self, stage: str, key: str) -> Path:
        return self.workdir / stage / f".partial-{key}"

    def lookup(self, stage: str, key: str) -> Artifact | None:
        """The committed artifact, or ``None`` when absent or its manifest is missing/invalid."""
        path = self.path(stage, key)
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        if manifest.get("key") != key or manifest.get("stage") != stage:
            return None
        return Artifact(stage, key, path, manifest)

    def require(self, stage: str, key: str) -> Artifact:
        art = self.lookup(stage, key)
        if art is None:
            raise FileNotFoundError(f"artifact {stage}/{key} is missing under {self.workdir}")
        return art

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Exclusive lock on one (stage, key) across processes and hosts sharing the workdir;
        waits for a holder to finish, takes over from a dead one (``storage.locks``)."""
        from inversescope.storage.locks import LeaseLock

        with LeaseLock(self.workdir / stage / f".{key}.lease"):
            yield

    def begin(self, stage: str, key: str, resumable: bool) -> Path:
        """The partial directory to build in (call under ``lock``). A non-resumable stage starts
        from an empty one; a resumable one keeps what an interrupted run committed."""
        partial = self.partial_path(stage, key)
        if partial.exists() and not resumable:
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        return partial

    def commit(self, stage: str, key: str, manifest: dict[str, Any]) -> Artifact:
        """Rename the partial directory into place, then write the manifest (last)."""
        partial, final = self.partial_path(stage, key), self.path(stage, key)
        if final.exists():  # left by a run killed between rename and manifest
            shutil.rmtree(final)
        os.replace(partial, final)
        fault_point(stage, "renamed")  # tests only: a crash between rename and manifest
        full = {
            "stage": stage,
            "key": key,
            "created": datetime.now(UTC).isoformat(),
            "versions": package_versions(),
            **manifest,
        }
        write_json_atomic(final / MANIFEST, full)
        return Artifact(stage, key, final, full)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0
