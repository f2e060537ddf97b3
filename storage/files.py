"""Where a workdir lives: a local directory (``pathlib.Path``) or a bucket prefix
(``storage.buckets.ObjectPath``, the same part of Path's interface), and the few operations
that differ between them. Everything else in ``storage`` takes either; stages see one
interface and never ask which.

A local path works exactly as before: these helpers take the local branch first, with the
code (temporary name, then ``os.replace``) that local workdirs have always used; the bucket
module is imported only when a workdir is a URL.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias

if TYPE_CHECKING:
    from inversescope.storage.buckets import ObjectPath

Where: TypeAlias = "Path | ObjectPath"
"""A file or directory of a workdir: a local path or a key in a bucket."""


def location(workdir: str | os.PathLike | Any) -> Where:
    """A workdir or a path in one: a URL (``s3://bucket/prefix``, ``gs://``, ``az://``) is a
    bucket prefix, ``file:///path`` and anything else a local path (kept as given)."""
    if not isinstance(workdir, str | os.PathLike):
        if is_remote(workdir):
            return workdir
        raise TypeError(f"workdir {workdir!r}: expected a path or a URL")
    text = os.fspath(workdir)
    scheme, sep, rest = text.partition("://")
    if not sep or isinstance(workdir, Path):
        return Path(workdir)
    if scheme == "file":
        return Path(rest)
    from inversescope.storage.buckets import SCHEMES, ObjectPath

    if scheme not in SCHEMES:
        raise ValueError(
            f"workdir {text!r}: unsupported scheme {scheme}://; accepted: a local path, "
            f"file://, {', '.join(s + '://' for s in SCHEMES)}"
        )
    return ObjectPath.from_url(text)


def is_remote(where: Any) -> bool:
    """Whether ``where`` is a bucket path (not a local one)."""
    return type(where).__name__ == "ObjectPath" and hasattr(where, "root")


def reach(where: Where) -> None:
    """Nothing for a local path; for a bucket one listing request, raising ``OSError`` with a
    one-line reason (secrets redacted) when it cannot be reached: no such bucket, refused
    credentials, no endpoint."""
    if is_remote(where):
        from inversescope.storage.buckets import probe

        probe(where)


def write_bytes_atomic(path: Where, data: bytes) -> None:
    """Whole or nothing: a hidden temporary file, fsynced, then ``os.replace``; a PUT on a
    bucket (atomic by itself)."""
    if is_remote(path):
        path.write_bytes(data)
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def source(path: Where) -> Path | BinaryIO:
    """What a reader that takes a local file or a file object (pyarrow, torch, polars) reads:
    the local path, or the object's bytes in memory."""
    return io.BytesIO(path.read_bytes()) if is_remote(path) else path


@contextmanager
def writing(path: Where) -> Iterator[Path]:
    """A local file for a writer that needs one (``torch.save``, ``savefig``): the path itself
    locally; on a bucket a temporary file of the same name (``torch.save`` names its archive's
    records after the file: the same name, the same bytes), put as ``path`` when the block ends
    without error."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="inversescope-put-") as tmp:
        local = Path(tmp) / path.name
        yield local
        path.write_bytes(local.read_bytes())


@contextmanager
def writing_dir(path: Where) -> Iterator[Path]:
    """A local directory for a writer of directories (``save_pretrained``): the path itself
    (created) locally; on a bucket a temporary one uploaded under ``path`` afterwards."""
    if not is_remote(path):
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="inversescope-put-") as tmp:
        yield Path(tmp)
        path.upload(Path(tmp))


def local_dir(path: Where) -> Path:
    """A local directory with the content of ``path`` (a committed model directory): itself,
    or a cached copy of the bucket's objects (``storage.buckets.cache_dir``)."""
    return path.local_copy() if is_remote(path) else path


def machine_local(workdir: Where, rel: str) -> Path:
    """A local path for what only a filesystem can hold (SQLite): ``workdir / rel`` locally, a
    per-workdir path in this machine's cache for a bucket."""
    if not is_remote(workdir):
        return Path(workdir) / rel
    from inversescope.storage.buckets import machine_local as bucket_local

    return bucket_local(workdir, rel)


def remove_tree(path: Where) -> None:
    if is_remote(path):
        path.rmtree()
        return
    import shutil

    shutil.rmtree(path)


def tree_files(path: Where) -> list[Where]:
    """Every file under ``path``, sorted (a bucket: one listing, sizes included)."""
    if is_remote(path):
        return path.files()
    return sorted(p for p in path.rglob("*") if p.is_file())


def tree_size(path: Where) -> int:
    """Bytes of every file under ``path`` (links not followed)."""
    if is_remote(path):
        return sum(p.stat().st_size for p in path.files()) + (
            path.stat().st_size if path.is_file() else 0
        )
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def each(fn: Callable[[Any], Any], items: list) -> list:
    """``[fn(x) for x in items]``, concurrently when they are requests to a bucket."""
    if len(items) > 1 and any(is_remote(x) for x in items[:1]):
        from concurrent.futures import ThreadPoolExecutor

        from inversescope.storage.buckets import IO_THREADS

        with ThreadPoolExecutor(IO_THREADS) as pool:
            return list(pool.map(fn, items))
    return [fn(x) for x in items]
