"""The workdir a view serves: its complete runs, what is not complete yet, and the sample
artifacts of every method (for the compare page). Runs are opened once per server and kept:
a committed artifact never changes (its directory is named by its key)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from inversescope import api
from inversescope.storage import verify
from inversescope.storage.artifacts import MANIFEST
from inversescope.storage.files import Where, location
from inversescope.view.data import RunData
from inversescope.view.errors import Missing, Unreadable, first_line

STAGES_SHOWN = ("sample", "label", "fcr")


@dataclass(frozen=True)
class SampleArtifact:
    """A committed sample artifact: whose samples (method, preset), over which references."""

    key: str
    path: Where
    manifest: dict[str, Any]

    @property
    def method(self) -> str:
        return self.manifest.get("run", {}).get("controls", {}).get("method") or "?"

    @property
    def extract_key(self) -> str | None:
        return self.manifest.get("inputs", {}).get("extract")

    @property
    def created(self) -> str:
        return self.manifest.get("created", "")


def _manifest(path: Where) -> dict[str, Any] | None:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


class Workdir:
    """One workdir's runs, opened lazily and kept for the server's life."""

    def __init__(self, path: str | Path):
        self.path: Where = location(path)
        self._runs: dict[str, RunData] = {}
        self._lock = threading.Lock()

    def runs(self) -> pl.DataFrame:
        """One row per complete run, newest first (``inversescope.runs``)."""
        if not self.path.is_dir():
            raise Missing("No workdir", f"{str(self.path)!r} does not exist or is no directory")
        return api.runs(self.path).reverse()

    def run(self, key: str) -> RunData:
        """The complete run whose key is ``key`` or starts with it."""
        with self._lock:
            if key in self._runs:
                return self._runs[key]
        keys = self.runs()["key"].to_list()
        found = [k for k in keys if k == key] or [k for k in keys if k.startswith(key)]
        if len(found) != 1:
            raise self._not_a_run(key, found)
        full = found[0]
        with self._lock:
            if full not in self._runs:
                self._runs[full] = self._open(full)
            self._runs.setdefault(key, self._runs[full])
            return self._runs[full]

    def _open(self, key: str) -> RunData:
        try:
            return RunData(api.Run(self.path, key))
        except FileNotFoundError as e:
            raise Missing(
                f"Run {key[:12]} is incomplete",
                first_line(e),
                f"rerun its preset with `inversescope run PRESET --workdir {self.path}`",
            ) from e
        except (ValidationError, KeyError, ValueError) as e:
            raise Unreadable(
                f"Run {key[:12]} cannot be read",
                f"its manifests do not describe a run ({first_line(e)})",
                f"`inversescope verify {self.path}` checks every artifact",
            ) from e

    def _not_a_run(self, key: str, found: list[str]) -> Missing:
        if len(found) > 1:
            return Missing("Ambiguous run key", f"{key!r} starts {len(found)} run keys", None)
        for line in self.pending():
            if key and key in line:
                return Missing(f"Run {key[:12]} is not complete", line, "reload when it is done")
        return Missing(
            "No such run",
            f"no complete run under {str(self.path)!r} has a key starting with {key!r}",
            "the runs page lists the complete ones",
        )

    def pending(self) -> list[str]:
        """One line per build in progress, interrupted build, and run that stopped before its
        labels or its FCR table: what a person needs to know about the runs not listed."""
        if not self.path.is_dir():
            return []
        lines: list[str] = []
        referenced = {"label": set(), "sample": set()}  # keys some later stage read
        committed: dict[str, list[tuple[str, dict]]] = {s: [] for s in STAGES_SHOWN}
        for entry in verify.scan(self.path):
            if entry.kind == "partial":
                holder = verify.live_holder(verify.lease_path(entry.path.parent, entry.key))
                state = f"being written ({holder})" if holder else "interrupted (stale partial)"
                lines.append(f"{entry.stage} {entry.key}: {state}")
            elif entry.kind == "artifact" and entry.stage in STAGES_SHOWN:
                manifest = _manifest(entry.path)
                if manifest is None:
                    lines.append(f"{entry.stage} {entry.key}: manifest unreadable")
                    continue
                committed[entry.stage].append((entry.key, manifest))
                for stage in referenced:
                    if stage in manifest.get("inputs", {}):
                        referenced[stage].add(manifest["inputs"][stage])
        for key, m in committed["sample"]:
            if key not in referenced["sample"]:
                lines.append(f"sample {key}: {_what(m)}, samples but no labels yet")
        for key, m in committed["label"]:
            if key not in referenced["label"]:
                lines.append(f"label {key}: {_what(m)}, labels but no FCR table yet")
        return lines

    def sample_artifacts(self) -> list[SampleArtifact]:
        """Every committed sample artifact, oldest first."""
        out = []
        for path in sorted(self.path.glob(f"sample/*/{MANIFEST}")):
            manifest = _manifest(path.parent)
            if manifest is not None and manifest.get("key") == path.parent.name:
                out.append(SampleArtifact(path.parent.name, path.parent, manifest))
        return sorted(out, key=lambda a: a.created)

    def labels_of(self, sample_key: str) -> Where | None:
        """The newest committed label artifact that labelled these samples, if any."""
        best: tuple[str, Where] | None = None
        for path in self.path.glob(f"label/*/{MANIFEST}"):
            manifest = _manifest(path.parent)
            if manifest and manifest.get("inputs", {}).get("sample") == sample_key:
                created = manifest.get("created", "")
                if best is None or created > best[0]:
                    best = (created, path.parent)
        return None if best is None else best[1]


def _what(manifest: dict[str, Any]) -> str:
    run = manifest.get("run", {})
    method = run.get("controls", {}).get("method")
    return f"preset {run.get('preset')}, method {method}"
