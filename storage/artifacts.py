"""Artifact directories that become visible only when complete.

On disk: ``<workdir>/<stage>/<key>/`` holds the artifact and, written last, ``manifest.json``.
A stage builds in ``<workdir>/<stage>/.partial-<key>/``, renames it into place, then writes the
manifest; a cache hit needs a valid manifest, so "the folder exists" never means "done".
A per-key lock file keeps two runs from building the same artifact at once. A resumable stage
keeps its partial directory across a crash and picks it up on the next run.

In a bucket (``s3://...``: no rename) a build writes under a prefix of its own and is never
moved; the commit is the manifest, written last with a conditional put (``If-None-Match: *``)::

    <workdir>/<stage>/<key>/manifest.json   names the build readers use ("build")
    <workdir>/<stage>/<key>/<build>/...     one build's files (build = b<UTC time>-<random>),
                                            and .build: who started it, when
    <workdir>/<stage>/.<key>.lease          the per-key lock, a lease object (storage.locks)

Readers trust only manifests. Of two writers racing on one key exactly one manifest put
succeeds; the other finds the winner's manifest, removes its own build and returns the
winner's artifact. A resumable stage adopts the build a killed run left (its chunk and unit
markers, its training checkpoint); a non-resumable one starts a new build. Builds that no
manifest names are what ``gc`` removes. Before its manifest put a writer
renews its lease (``If-Match``), so a holder that lost its lease while stalled never commits.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from inversescope.core.faults import fault_point
from inversescope.storage.files import Where, is_remote, location

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


def write_json_atomic(path: Where, value: Any) -> None:
    """Write JSON to a hidden temporary file, fsync it, then ``os.replace`` it into place (in
    a bucket: one PUT of the same bytes)."""
    if is_remote(path):
        path.write_text(json.dumps(value, indent=2, sort_keys=True, default=str))
        return
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
    path: Where  # the directory (or bucket prefix) its files lie under
    manifest: dict[str, Any]


BUILD_PREFIX = "b"
"""Bucket builds are named ``b<UTC time>-<random hex>``: they sort by start time."""


BUILD_RECORD = ".build"
"""In a bucket build: who started it and when (a hidden file, no artifact data)."""


def new_build_id() -> str:
    return f"{BUILD_PREFIX}{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


def is_build_id(name: str) -> bool:
    head, _, tail = name.partition("-")
    return len(head) == 16 and head.startswith(BUILD_PREFIX) and len(tail) == 8


class ArtifactStore:
    """All artifacts of one working directory (a local path, or a bucket URL)."""

    def __init__(self, workdir: Where | str):
        self.workdir = location(workdir)
        self.remote = is_remote(self.workdir)
        self._leases: dict[tuple[str, str], Any] = {}  # held by this store, for commit's check
        self._builds: dict[tuple[str, str], Where] = {}  # bucket builds begun by this store

    def path(self, stage: str, key: str) -> Where:
        """Where the committed artifact lies on disk; in a bucket, the key's prefix (its
        manifest and builds lie under it)."""
        return self.workdir / stage / key

    def partial_path(self, stage: str, key: str) -> Where:
        """The build in progress: on disk ``.partial-<key>``; in a bucket the build that no
        manifest names (``begin`` made or adopted it; ``FileNotFoundError`` when none)."""
        if not self.remote:
            return self.workdir / stage / f".partial-{key}"
        builds = self.open_builds(stage, key)
        if not builds:
            raise FileNotFoundError(f"no build of {stage}/{key} in progress under {self.workdir}")
        return builds[-1]

    def open_builds(self, stage: str, key: str) -> list[Where]:
        """Bucket builds of ``stage/key`` that no manifest names, oldest first."""
        art = self.lookup(stage, key)
        named = art.path.name if art is not None else None
        return [
            p
            for p in (self.workdir / stage / key).iterdir()
            if is_build_id(p.name) and p.name != named and not p.is_file()
        ]

    def lookup(self, stage: str, key: str) -> Artifact | None:
        """The committed artifact, or ``None`` when absent or its manifest is missing/invalid."""
        path = self.path(stage, key)
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        if manifest.get("key") != key or manifest.get("stage") != stage:
            return None
        if self.remote:
            build = manifest.get("build")
            if not isinstance(build, str) or not is_build_id(build):
                return None
            path = path / build
        return Artifact(stage, key, path, manifest)

    def committed(self, stage: str) -> list[Artifact]:
        """Every committed artifact of ``stage`` (a valid manifest), by key."""
        stage_dir = self.workdir / stage
        if self.remote:
            keys = [p.name for p in stage_dir.iterdir() if not p.is_file()]
        else:
            keys = [p.parent.name for p in stage_dir.glob(f"*/{MANIFEST}")]
        found = [self.lookup(stage, k) for k in sorted(keys) if not k.startswith(".")]
        return [a for a in found if a is not None]

    def require(self, stage: str, key: str) -> Artifact:
        art = self.lookup(stage, key)
        if art is None:
            raise FileNotFoundError(f"artifact {stage}/{key} is missing under {self.workdir}")
        return art

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Exclusive lock on one (stage, key) across processes and hosts sharing the workdir;
        waits for a holder to finish, takes over from a dead one (``storage.locks``)."""
        from inversescope.storage.locks import lease_for

        with lease_for(self.workdir / stage / f".{key}.lease") as lease:
            self._leases[(stage, key)] = lease
            try:
                yield
            finally:
                self._leases.pop((stage, key), None)

    def begin(self, stage: str, key: str, resumable: bool) -> Where:
        """The partial directory to build in (call under ``lock``). A non-resumable stage starts
        from an empty one; a resumable one keeps what an interrupted run committed."""
        if self.remote:
            return self._begin_build(stage, key, resumable)
        partial = self.partial_path(stage, key)
        if partial.exists() and not resumable:
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        return partial

    def _begin_build(self, stage: str, key: str, resumable: bool) -> Where:
        builds = self.open_builds(stage, key)
        if resumable and builds:
            log.info("%s: resuming build %s", stage, builds[-1])
            self._builds[(stage, key)] = builds[-1]
            return builds[-1]
        # other open builds stay: a writer that lost its lease may still be writing one (it
        # never commits: its renewal fails); gc removes them once no live lease holds the key
        build = self._builds[(stage, key)] = self.workdir / stage / key / new_build_id()
        # a prefix exists once an object lies under it: this record makes the build visible at
        # once to the shards of a fan-out (sample's plan writes nothing) and to gc
        from inversescope.storage.locks import host_name

        started = {"host": host_name(), "pid": os.getpid(), "started": time.time()}
        (build / BUILD_RECORD).write_text(json.dumps(started, sort_keys=True))
        return build

    def commit(self, stage: str, key: str, manifest: dict[str, Any]) -> Artifact:
        """Rename the partial directory into place, then write the manifest (last). In a
        bucket: the manifest, naming the build, put only if absent."""
        if self.remote:
            return self._commit_build(stage, key, manifest)
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

    def _full_manifest(self, stage: str, key: str, manifest: dict[str, Any]) -> dict[str, Any]:
        return {
            "stage": stage,
            "key": key,
            "created": datetime.now(UTC).isoformat(),
            "versions": package_versions(),
            **manifest,
        }

    def _commit_build(self, stage: str, key: str, manifest: dict[str, Any]) -> Artifact:
        build = self._builds.pop((stage, key), None) or self.partial_path(stage, key)
        fault_point(stage, "renamed")  # tests only: files in place, manifest not yet written
        full = {**self._full_manifest(stage, key, manifest), "build": build.name}
        lease = self._leases.get((stage, key))
        if lease is not None:
            lease.renew()  # LockLost when another process took the key over meanwhile
        text = json.dumps(full, indent=2, sort_keys=True, default=str)
        try:
            (self.path(stage, key) / MANIFEST).create(text.encode())
        except FileExistsError:
            winner = self.lookup(stage, key)
            if winner is None:
                raise
            log.warning(
                "%s/%s: another writer committed first; using its build %s and removing %s",
                stage, key, winner.path.name, build.name,
            )  # fmt: skip
            if winner.path != build:
                build.rmtree()
            return winner
        return Artifact(stage, key, build, full)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0
