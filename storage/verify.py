"""Checking and cleaning a workdir: ``verify`` and ``gc``.

``verify_workdir`` reads every committed artifact back: its manifest (valid JSON, ``stage`` and
``key`` matching the directory), every Zarr chunk of ``activations.zarr`` (crc32c-checksummed:
a corrupt chunk fails to decode), every Parquet file in full, every ``.pt`` checkpoint (torch,
``weights_only``), every safetensors file and every JSON file. It also reports partial
directories no live lock holds (stale), directories and files that are none of an artifact, a
partial, a lock file or the label stage's caches (orphaned), and builds in progress (a live
lock: not a problem).

``collect_garbage`` removes the partial directories of dead runs, committed directories without
a valid manifest, and committed artifacts that no kept ``fcr`` result reaches through the
manifests' ``inputs`` (a ``hypotheses`` table is kept with the fcr result it reads). It takes
each artifact's lock before removing it, so a build in progress is never touched; while any
build is in progress it removes no committed artifact at all (it cannot tell which ones that
build reads).

Parquet files are written with page checksums (``storage.tables``) and read back with their
verification on, so a flipped byte in a data page is found; a flip in the footer's statistics
that still parses can go unseen. Zarr chunks are fully checksummed; every ``zarr.json`` is read
on its own, so corrupt metadata is reported as that file, naming its array or group.

A bucket workdir (``storage.artifacts``: builds under ``<stage>/<key>/<build>/``, the manifest
beside them) is read from one listing: the build a manifest names is the artifact, every other
build of the key is a partial build (stale without a live lease, in progress with one).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inversescope.storage import layout
from inversescope.storage.activations import STORE, bad_chunks, zarr_store
from inversescope.storage.artifacts import MANIFEST, is_build_id
from inversescope.storage.files import (
    Where,
    is_remote,
    location,
    remove_tree,
    source,
    tree_files,
    tree_size,
)
from inversescope.storage.locks import LEASE_SECONDS, Holder, _pid_alive, host_name, lease_for

log = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"
_LOCK_FILE = re.compile(r"^\.(?P<key>.+)\.lease(\.takeover)?$|^\.\..+\.lease\.[0-9a-f]+\.tmp$")
_LABEL_CACHES = (layout.FEATURE_CACHE, layout.LABELLER_CACHE)
_SQLITE_SIDECARS = ("-wal", "-shm", "-journal")

CORRUPT, ORPHANED, STALE, IN_PROGRESS = "corrupt", "orphaned", "stale partial", "in progress"


@dataclass(frozen=True)
class Finding:
    kind: str  # CORRUPT | ORPHANED | STALE | IN_PROGRESS
    path: Where
    detail: str

    @property
    def problem(self) -> bool:
        return self.kind != IN_PROGRESS


@dataclass
class VerifyReport:
    findings: list[Finding] = field(default_factory=list)
    artifacts: int = 0  # committed artifacts checked
    files: int = 0  # files read back (each Zarr chunk counts once)

    @property
    def ok(self) -> bool:
        return not any(f.problem for f in self.findings)

    def count(self, kind: str) -> int:
        return sum(f.kind == kind for f in self.findings)


# --- locks --------------------------------------------------------------------------------
def lease_path(stage_dir: Where, key: str) -> Where:
    return stage_dir / f".{key}.lease"


def live_holder(lease: Where) -> str | None:
    """Who holds ``lease`` (``host pid N``) while the lock is live, else ``None``: the file is
    missing, its lease expired, or its holder ran on this host and its pid is dead. A file being
    written (not yet parseable) is live for a lease from its last change."""
    try:
        raw = lease.read_text(encoding="utf-8")
        mtime = lease.stat().st_mtime
    except FileNotFoundError:
        return None
    holder = Holder.parse(raw)
    now = time.time()
    if holder is None:
        return "a starting holder" if now <= mtime + LEASE_SECONDS else None
    if now > holder.expires:
        return None
    if holder.host == host_name() and not _pid_alive(holder.pid):
        return None
    return f"{holder.host} pid {holder.pid}"


# --- the workdir's entries ----------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    kind: str  # "artifact" | "incomplete" | "partial" | "lock" | "cache" | "orphan"
    stage: str
    key: str  # "" where the entry has none
    path: Where
    manifest: Where | None = None  # an artifact's manifest (in a bucket: beside its build)
    lease: Where | None = None  # the lock of a partial or committed entry

    @property
    def manifest_path(self) -> Where:
        return self.manifest if self.manifest is not None else self.path / MANIFEST

    @property
    def lease_path(self) -> Where:
        return self.lease if self.lease is not None else lease_path(self.path.parent, self.key)


def _stage_dirs(workdir: Path) -> list[Path]:
    return sorted(p for p in workdir.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(workdir: Where) -> Iterator[Entry]:
    """Every entry of every stage directory, classified; top-level files are orphans."""
    if is_remote(workdir):
        yield from _scan_bucket(workdir)
        return
    for p in sorted(workdir.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            yield Entry("orphan", "", "", p)
    for stage_dir in _stage_dirs(workdir):
        stage = stage_dir.name
        for p in sorted(stage_dir.iterdir()):
            name = p.name
            if p.is_dir() and name.startswith(PARTIAL_PREFIX):
                yield Entry("partial", stage, name[len(PARTIAL_PREFIX) :], p)
            elif p.is_file() and _LOCK_FILE.match(name):
                yield Entry("lock", stage, "", p)
            elif stage == "label" and _is_label_cache(p):
                yield Entry("cache", stage, "", p)
            elif p.is_dir() and not name.startswith("."):
                kind = "artifact" if (p / MANIFEST).is_file() else "incomplete"
                yield Entry(kind, stage, name, p)
            else:
                yield Entry("orphan", stage, "", p)


def _scan_bucket(workdir: Where) -> Iterator[Entry]:
    """The entries of a bucket workdir, from one listing of every object under it."""
    by_key: dict[tuple[str, str], list] = {}
    caches: set[str] = set()
    for obj in workdir.files():
        parts = obj.relative_to(workdir).parts
        if len(parts) == 1:
            yield Entry("orphan", "", "", obj)
        elif len(parts) == 2:
            kind = "lock" if _LOCK_FILE.match(parts[1]) else "orphan"
            yield Entry(kind, parts[0], "", obj)
        elif parts[0] == "label" and parts[1] == layout.FEATURE_CACHE:
            caches.add(parts[0])
        else:
            by_key.setdefault((parts[0], parts[1]), []).append(parts[2:])
    for stage in sorted(caches):
        yield Entry("cache", stage, "", workdir / stage / layout.FEATURE_CACHE)
    for (stage, key), rels in sorted(by_key.items()):
        key_dir = workdir / stage / key
        lease = lease_path(workdir / stage, key)
        manifest, named = None, None
        if (MANIFEST,) in rels:
            manifest = key_dir / MANIFEST
            try:
                named = json.loads(manifest.read_text(encoding="utf-8")).get("build")
            except (ValueError, AttributeError):
                named = None
        builds = sorted({r[0] for r in rels if len(r) > 1 and is_build_id(r[0])})
        if manifest is not None:
            path = key_dir / named if isinstance(named, str) and named else key_dir
            yield Entry("artifact", stage, key, path, manifest, lease)
        for build in builds:
            if build != named:
                yield Entry("partial", stage, key, key_dir / build, None, lease)
        for rel in rels:
            if rel != (MANIFEST,) and not (len(rel) > 1 and is_build_id(rel[0])):
                yield Entry("orphan", stage, key, key_dir / "/".join(rel))


def _is_label_cache(p: Path) -> bool:
    if p.name == layout.FEATURE_CACHE:
        return p.is_dir()
    base = layout.LABELLER_CACHE
    return p.is_file() and p.name in (base, *(base + s for s in _SQLITE_SIDECARS))


def read_manifest(path: Where, stage: str, key: str) -> dict[str, Any]:
    """The manifest at ``path``; ``ValueError`` naming what is wrong."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise ValueError(f"a JSON {type(manifest).__name__}, expected an object")
    found = (manifest.get("stage"), manifest.get("key"))
    if found != (stage, key):
        raise ValueError(f"names stage/key {found[0]}/{found[1]}, expected {stage}/{key}")
    return manifest


# --- verify -------------------------------------------------------------------------------
def _check_file(path: Where) -> str | None:
    """Why ``path`` cannot be read back, or ``None`` (also for kinds that carry no structure)."""
    suffix = path.suffix
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.ParquetFile(source(path), page_checksum_verification=True).read()
        elif suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".pt":
            import torch  # deferred: only checkpoints need it

            torch.load(source(path), map_location="cpu", weights_only=True)
        elif suffix == ".safetensors":
            from safetensors.torch import load, load_file

            if is_remote(path):
                load(path.read_bytes())
            else:
                load_file(path, device="cpu")
        else:
            return None
    except Exception as e:  # any failure to read a file back is what verify reports
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return None


def _node(rel: str) -> str:
    """What the ``zarr.json`` at ``rel`` (relative to the store) describes."""
    where = rel.rpartition("/")[0]
    return f"node {where}" if where else "root group"


def _check_store(store_dir: Where, report: VerifyReport) -> None:
    """Each ``zarr.json`` on its own (a corrupt one is named, with its node), then each array
    its metadata describes, chunk by chunk."""
    import zarr

    arrays = []
    for meta in tree_files(store_dir):
        if meta.name != "zarr.json":
            continue
        rel = str(meta.relative_to(store_dir))
        try:
            node = json.loads(meta.read_text(encoding="utf-8"))
            if not isinstance(node, dict) or node.get("node_type") not in ("array", "group"):
                raise ValueError("not Zarr v3 metadata (no node_type array or group)")
        except Exception as e:  # unreadable metadata: name the file and its node
            why = f"metadata of {_node(rel)}: {type(e).__name__}: {e}"
            report.findings.append(Finding(CORRUPT, meta, why))
            continue
        if node["node_type"] == "array":
            arrays.append((meta, rel.rpartition("/")[0]))
    store = zarr_store(store_dir, read_only=True)
    for meta, name in arrays:
        try:
            arr = zarr.open_array(store, path=name, mode="r")
        except Exception as e:  # parses as JSON, but zarr cannot build the array from it
            why = f"metadata of array {name}: {type(e).__name__}: {e}"
            report.findings.append(Finding(CORRUPT, meta, why))
            continue
        report.files += 1 + arr.nchunks
        for path, why in bad_chunks(arr, store_dir):
            report.findings.append(Finding(CORRUPT, path, why))


def _check_artifact(entry: Entry, report: VerifyReport) -> None:
    report.artifacts += 1
    try:
        manifest = read_manifest(entry.manifest_path, entry.stage, entry.key)
    except ValueError as e:
        report.findings.append(Finding(CORRUPT, entry.manifest_path, f"manifest {e}"))
        return
    files = tree_files(entry.path)
    if is_remote(entry.path) and not files:
        why = f"the manifest names build {manifest.get('build')!r}, which holds no objects"
        report.findings.append(Finding(CORRUPT, entry.path, why))
        return
    if entry.stage == "sample":
        present = set(files)
        for part in manifest["metrics"]["parts"]:
            if entry.path / part not in present:
                why = "sample part listed in the manifest is missing"
                report.findings.append(Finding(CORRUPT, entry.path / part, why))
    for path in files:
        rel = path.relative_to(entry.path)
        if rel.parts[0] == STORE or path.name == MANIFEST:
            continue
        report.files += 1
        why = _check_file(path)
        if why is not None:
            report.findings.append(Finding(CORRUPT, path, why))
    if any(p.relative_to(entry.path).parts[0] == STORE for p in files):
        _check_store(entry.path / STORE, report)


def verify_workdir(workdir: Where | str) -> VerifyReport:
    """Read every artifact of ``workdir`` back and classify every entry (see the module doc)."""
    workdir = location(workdir)
    report = VerifyReport()
    for entry in scan(workdir):
        if entry.kind == "artifact":
            log.info("verifying %s", entry.path)
            _check_artifact(entry, report)
        elif entry.kind in ("partial", "incomplete"):
            holder = live_holder(entry.lease_path)
            if holder is not None:
                report.findings.append(Finding(IN_PROGRESS, entry.path, f"lock held by {holder}"))
            elif entry.kind == "partial":
                why = "no live lock holds it (the run that built it is dead)"
                report.findings.append(Finding(STALE, entry.path, why))
            else:
                why = f"directory without {MANIFEST} (a commit that never finished)"
                report.findings.append(Finding(ORPHANED, entry.path, why))
        elif entry.kind == "cache" and entry.path.name == layout.FEATURE_CACHE:
            for path in sorted(entry.path.glob("*.parquet")):
                report.files += 1
                why = _check_file(path)
                if why is not None:
                    report.findings.append(Finding(CORRUPT, path, why))
        elif entry.kind == "orphan":
            why = "not an artifact, a partial build, a lock file or a label cache"
            report.findings.append(Finding(ORPHANED, entry.path, why))
    return report


# --- gc -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Removal:
    path: Where
    size: int  # bytes
    why: str


@dataclass
class GcReport:
    removed: list[Removal] = field(default_factory=list)  # or, dry run, that would be
    skipped: list[tuple[Where, str]] = field(default_factory=list)
    kept_results: list[str] = field(default_factory=list)  # fcr keys kept
    kept: int = 0  # committed artifacts kept

    @property
    def freed(self) -> int:
        return sum(r.size for r in self.removed)


def disk_size(path: Where) -> int:
    """Bytes of every file under ``path`` (links not followed)."""
    return tree_size(path)


def reachable(
    roots: list[tuple[str, str]], manifests: dict[tuple[str, str], dict]
) -> set[tuple[str, str]]:
    """Every (stage, key) reachable from ``roots`` through manifests' ``inputs``."""
    seen: set[tuple[str, str]] = set()
    todo = list(roots)
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        manifest = manifests.get(node)
        if manifest is None:
            continue
        for stage, key in (manifest.get("inputs") or {}).items():
            todo.append((stage, str(key)))
    return seen


def _remove(entry: Entry, why: str, dry_run: bool, report: GcReport) -> None:
    """Remove ``entry`` under its own lock (skipped when a live run holds it)."""
    holder = live_holder(entry.lease_path)
    if holder is not None:
        report.skipped.append((entry.path, f"lock held by {holder}"))
        return
    size = disk_size(entry.path)
    if dry_run:
        report.removed.append(Removal(entry.path, size, why))
        return
    try:
        with lease_for(entry.lease_path, timeout=0):
            if not entry.path.exists():
                return
            # the manifest first: from then on no lookup takes the directory for an artifact
            if entry.kind != "partial":
                entry.manifest_path.unlink(missing_ok=True)
            remove_tree(entry.path)
    except TimeoutError:
        report.skipped.append((entry.path, "lock taken by a run that started meanwhile"))
        return
    log.info("removed %s (%s, %d bytes)", entry.path, why, size)
    report.removed.append(Removal(entry.path, size, why))


def collect_garbage(
    workdir: Path | str, keep: int | None = None, dry_run: bool = False
) -> GcReport:
    """Remove dead partial builds, directories without a valid manifest and the artifacts no
    kept fcr result reaches (a hypotheses table is kept with the fcr result it reads).
    ``keep``: the newest ``keep`` fcr artifacts (by manifest ``created``) are kept, ``None``
    keeps every one. A workdir without any fcr result keeps its
    committed artifacts. The label stage's caches are always kept (their files are not named
    in the label manifests)."""
    if keep is not None and keep < 1:
        raise ValueError(f"keep={keep}: expected a positive number of fcr results to keep")
    workdir = location(workdir)
    report = GcReport()
    entries = list(scan(workdir))
    manifests: dict[tuple[str, str], dict] = {}
    invalid: list[Entry] = []
    for entry in entries:
        if entry.kind == "artifact":
            try:
                manifests[(entry.stage, entry.key)] = read_manifest(
                    entry.manifest_path, entry.stage, entry.key
                )
            except ValueError:
                invalid.append(entry)
    results = sorted(
        (k for k in manifests if k[0] == "fcr"),
        key=lambda k: str(manifests[k].get("created", "")),
        reverse=True,
    )
    kept_results = results if keep is None else results[:keep]
    report.kept_results = [k for _, k in kept_results]
    keep_set = reachable(kept_results, manifests)
    # a hypotheses table ranks beside the fcr result it reads: kept with it
    keep_set |= {
        k
        for k in manifests
        if k[0] == "hypotheses"
        and ("fcr", str((manifests[k].get("inputs") or {}).get("fcr"))) in keep_set
    }
    busy = [e.path for e in entries if e.kind == "lock" and _live_lock(e.path)]

    for entry in entries:
        if entry.kind == "partial":
            _remove(entry, "partial build of a dead run", dry_run, report)
        elif entry.kind == "incomplete" or entry in invalid:
            _remove(entry, "no valid manifest: a commit that never finished", dry_run, report)
    for entry in entries:
        node = (entry.stage, entry.key)
        if entry.kind != "artifact" or node not in manifests:
            continue
        if node in keep_set or not results:
            report.kept += 1
        elif busy:
            report.kept += 1
            report.skipped.append((entry.path, f"a build is in progress ({busy[0]})"))
        else:
            _remove(entry, "no kept fcr result references it", dry_run, report)
    return report


def _live_lock(path: Where) -> bool:
    return path.name.endswith(".lease") and live_holder(path) is not None
