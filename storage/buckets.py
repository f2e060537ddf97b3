"""Workdirs on object storage: ``s3://bucket/prefix`` (AWS S3, MinIO, Ceph RGW, any S3-compatible
store), ``gs://bucket/prefix`` and ``az://container/prefix``, through obstore (the Rust
``object_store`` crate: one client for all three, conditional puts, and the store zarr's
``ObjectStore`` is built on).

Only ``storage`` imports this module, and only once a workdir is a URL: it is in no stage's
cache key (keys hash what a stage computes, not where its bytes go, as with ``runner``), so a
local and a bucket run of one config share every key and write the same bytes.

``ObjectPath`` is a key in a bucket with the part of ``pathlib.Path``'s interface that artifacts
use (``/``, ``name``, ``read_bytes``, ``exists``, ``glob``, ...), so stages handle a bucket
workdir like a directory;
what differs (commits, locks, Zarr, Parquet, model directories) is dispatched in ``storage``.

Configuration is the standard one of each cloud, read from the environment by obstore: for S3
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``,
``AWS_ENDPOINT_URL`` (an S3-compatible store) and ``AWS_ALLOW_HTTP=true`` (a plain-HTTP
endpoint, e.g. on loopback); without keys, web identity (EKS), the ECS container endpoint and
the instance metadata service; with ``AWS_PROFILE`` (and boto3 installed), boto3's profile
chain. No secret is ever logged: errors are reported with every configured secret redacted.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

log = logging.getLogger(__name__)

AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
    "AWS_PROFILE",
)
"""The S3 settings a bucket workdir is configured by (obstore reads them; none is logged)."""
SCHEMES = ("s3", "gs", "az", "abfs", "abfss")
"""URL schemes of a bucket workdir."""
IO_THREADS = 16
"""Concurrent requests when many objects move at once (uploads, downloads, deletes)."""
CACHE_ENV = "INVERSESCOPE_CACHE"
"""Where committed model directories read from a bucket are kept (default
``~/.cache/inversescope``)."""
_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_CLIENT_SECRET",
)


class BucketError(OSError):
    """A request to the object store failed (the message has every secret redacted)."""


def redact(text: str) -> str:
    """``text`` with the value of every credential variable of the environment replaced."""
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _short(e: BaseException) -> str:
    """obstore's message up to its debug dump, on one line, secrets redacted."""
    first = " ".join(str(e).split("\n\nDebug source:")[0].split())
    code = re.search(r"<Code>(\w+)</Code>", first)  # an S3 error document: its code says it
    if code is not None:
        first = first[: first.find("<?xml")].rstrip(": ") + f" ({code.group(1)})"
    return redact(first)


def split_url(url: str) -> tuple[str, str]:
    """(``scheme://bucket``, key prefix) of a bucket URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"{url!r}: expected a bucket URL, one of {', '.join(SCHEMES)}")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{url!r}: no bucket named; expected {scheme}://BUCKET/PREFIX")
    return f"{scheme}://{bucket}", key.strip("/")


def _options(root: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if root.startswith("s3://"):
        # PutMode::Update (If-Match on the ETag): the leases' renewals and releases
        options["conditional_put"] = "etag"
        if os.environ.get("AWS_PROFILE") and not os.environ.get("AWS_ACCESS_KEY_ID"):
            try:
                from obstore.auth.boto3 import Boto3CredentialProvider
            except ImportError:  # boto3 absent: obstore's own chain (env, web identity, IMDS)
                pass
            else:
                options["credential_provider"] = Boto3CredentialProvider()
    return options


@cache
def store(url: str):
    """The obstore store rooted at ``url`` (a bucket, or a prefix of one, as Zarr takes it),
    configured from the environment; one per URL and process, so connections are reused."""
    from obstore.store import from_url

    return from_url(url, **_options(split_url(url)[0]))


def _errors(e: Exception, what: str) -> Exception:
    """obstore's exceptions as the builtins callers expect, with secrets redacted."""
    from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError

    if isinstance(e, NotFoundError | FileNotFoundError):  # obstore raises either
        return FileNotFoundError(f"{what}: not found")
    if isinstance(e, AlreadyExistsError):
        return FileExistsError(f"{what}: already exists")
    if isinstance(e, PreconditionError):
        return Changed(f"{what}: changed since it was read")
    return BucketError(f"{what}: {type(e).__name__}: {_short(e)}")


class Changed(RuntimeError):
    """A conditional put found the object changed (``If-Match`` failed)."""


@dataclass(frozen=True)
class Tag:
    """What identifies one version of an object for ``If-Match``: its ETag, and its version
    (GCS's generation) where the store has one."""

    e_tag: str | None
    version: str | None = None

    @classmethod
    def of(cls, meta: dict[str, Any]) -> Tag:
        return cls(meta.get("e_tag"), meta.get("version"))

    def mode(self) -> dict[str, str]:
        mode = {"e_tag": self.e_tag} if self.e_tag else {}
        return mode | ({"version": self.version} if self.version else {})


@dataclass(frozen=True)
class Stat:
    st_size: int
    st_mtime: float


class ObjectPath:
    """A key, or a key prefix (a "directory"), in a bucket, e.g. ``s3://runs/exp1/prior``."""

    __slots__ = ("_meta", "key", "root")

    def __init__(self, root: str, key: str = "", meta: dict[str, Any] | None = None):
        self.root = root.rstrip("/")
        self.key = key.strip("/")
        self._meta = meta  # from a listing: the object exists, with this size and ETag

    @classmethod
    def from_url(cls, url: str) -> ObjectPath:
        return cls(*split_url(url))

    @property
    def _store(self):
        return store(self.root)

    # --- names ----------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.root}/{self.key}" if self.key else self.root

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and (self.root, self.key) == (other.root, other.key)

    def __hash__(self) -> int:
        return hash((self.root, self.key))

    def __lt__(self, other: ObjectPath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, rel: str | PurePosixPath) -> ObjectPath:
        rel = str(rel).strip("/")
        return ObjectPath(self.root, f"{self.key}/{rel}" if self.key else rel)

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.root, self.key.rpartition("/")[0])

    @property
    def parts(self) -> tuple[str, ...]:
        return PurePosixPath(self.key).parts

    def relative_to(self, other: ObjectPath) -> PurePosixPath:
        if self.root != other.root or not (
            other.key == "" or self.key == other.key or self.key.startswith(other.key + "/")
        ):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.key[len(other.key) :].lstrip("/") or ".")

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    # --- objects --------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        import obstore as obs

        try:
            return bytes(obs.get(self._store, self.key).bytes())
        except Exception as e:
            raise _errors(e, str(self)) from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> Tag:
        """Put the object (a PUT is atomic: readers see the old object or the whole new one)."""
        return self._put(data, None)

    def write_text(self, text: str, encoding: str = "utf-8") -> Tag:
        return self.write_bytes(text.encode(encoding))

    def create(self, data: bytes) -> Tag:
        """Put only if absent (``If-None-Match: *``); ``FileExistsError`` when it exists."""
        return self._put(data, "create")

    def replace(self, data: bytes, tag: Tag) -> Tag:
        """Put only if the object is still version ``tag`` (``If-Match``); ``Changed`` when it
        is not (another writer got there first), ``FileNotFoundError`` when it is gone."""
        return self._put(data, tag.mode())

    def _put(self, data: bytes, mode) -> Tag:
        import obstore as obs

        try:
            result = obs.put(self._store, self.key, data, **({"mode": mode} if mode else {}))
        except Exception as e:
            raise _errors(e, str(self)) from None
        return Tag.of(result)

    def read_tagged(self) -> tuple[bytes, Tag]:
        """The object's content and its version, read together."""
        import obstore as obs

        try:
            got = obs.get(self._store, self.key)
            return bytes(got.bytes()), Tag.of(got.meta)
        except Exception as e:
            raise _errors(e, str(self)) from None

    def _head(self) -> dict[str, Any] | None:
        import obstore as obs

        if self._meta is not None:
            return self._meta
        try:
            return obs.head(self._store, self.key)
        except FileNotFoundError:
            return None
        except Exception as e:
            raise _errors(e, str(self)) from None

    def stat(self) -> Stat:
        meta = self._head()
        if meta is None:
            raise FileNotFoundError(str(self))
        return Stat(int(meta["size"]), meta["last_modified"].timestamp())

    def is_file(self) -> bool:
        return bool(self.key) and self._head() is not None

    def is_dir(self) -> bool:
        import obstore as obs

        prefix = f"{self.key}/" if self.key else ""
        try:
            for batch in obs.list(self._store, prefix, chunk_size=1):
                return bool(batch)
        except Exception as e:
            raise _errors(e, str(self)) from None
        return False

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: a prefix exists once an object lies under it."""

    def unlink(self, missing_ok: bool = False) -> None:
        import obstore as obs

        if not missing_ok and not self.is_file():
            raise FileNotFoundError(str(self))
        try:
            obs.delete(self._store, self.key)
        except Exception as e:
            raise _errors(e, str(self)) from None

    # --- listings ---------------------------------------------------------------------------
    def iterdir(self) -> Iterator[ObjectPath]:
        """The objects and the "directories" (common prefixes) right under this prefix."""
        import obstore as obs

        prefix = f"{self.key}/" if self.key else None
        try:
            found = obs.list_with_delimiter(self._store, prefix)
        except Exception as e:
            raise _errors(e, str(self)) from None
        items = [ObjectPath(self.root, p) for p in found["common_prefixes"]]
        items += [ObjectPath(self.root, m["path"], m) for m in found["objects"]]
        return iter(sorted(items))

    def files(self) -> list[ObjectPath]:
        """Every object under this prefix, at any depth, sorted (one paginated listing)."""
        import obstore as obs

        prefix = f"{self.key}/" if self.key else None
        try:
            metas = [m for batch in obs.list(self._store, prefix) for m in batch]
        except Exception as e:
            raise _errors(e, str(self)) from None
        return sorted(ObjectPath(self.root, m["path"], m) for m in metas)

    def rglob(self, pattern: str = "*") -> Iterator[ObjectPath]:
        """Objects under this prefix whose name matches ``pattern`` (directories are implied
        by their objects, so only objects are listed)."""
        return iter(p for p in self.files() if fnmatch.fnmatchcase(p.name, pattern))

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        """Objects and prefixes matching ``pattern`` relative to this prefix, one ``/``-part per
        pattern part (``*`` never crosses a ``/``)."""
        want = pattern.strip("/").split("/")
        seen: set[ObjectPath] = set()
        for obj in self.files():
            parts = obj.relative_to(self).parts
            if len(parts) < len(want):
                continue
            if all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, want, strict=False)):
                seen.add(obj if len(parts) == len(want) else self / "/".join(parts[: len(want)]))
        return iter(sorted(seen))

    def rmtree(self) -> None:
        """Delete every object under this prefix (and the object of this key, if any)."""
        import obstore as obs

        keys = [p.key for p in self.files()] + ([self.key] if self.is_file() else [])
        try:
            for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                obs.delete(self._store, keys[i : i + 1000])
        except Exception as e:
            raise _errors(e, str(self)) from None

    # --- local copies -------------------------------------------------------------------------
    def upload(self, local: Path) -> None:
        """Put every file under the local directory ``local`` below this prefix, concurrently."""
        files = [p for p in sorted(local.rglob("*")) if p.is_file()]
        with ThreadPoolExecutor(IO_THREADS) as pool:
            list(pool.map(lambda f: (self / f.relative_to(local).as_posix()).write_bytes(
                f.read_bytes()), files))  # fmt: skip

    def download(self, local: Path) -> None:
        """Get every object under this prefix into the local directory ``local``."""

        def get(obj: ObjectPath) -> None:
            dest = local / obj.relative_to(self)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(obj.read_bytes())

        with ThreadPoolExecutor(IO_THREADS) as pool:
            list(pool.map(get, self.files()))

    def local_copy(self) -> Path:
        """A local directory holding this prefix's objects (a committed model directory),
        downloaded once per machine into the cache and reused while the objects (names, sizes,
        ETags) stay the same."""
        listing = "\n".join(
            f"{p.relative_to(self)}\0{p.stat().st_size}\0{(p._meta or {}).get('e_tag')}"
            for p in self.files()
        )
        if not listing:
            raise FileNotFoundError(f"{self}: no objects under this prefix")
        digest = hashlib.sha256(f"{self}\n{listing}".encode()).hexdigest()[:24]
        dest = cache_dir() / "objects" / digest / (self.name or "root")
        if dest.is_dir():
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir()))
        try:
            self.download(tmp / "d")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp / "d", dest)
            except OSError:  # another process put the same copy there first
                if not dest.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("copied %s to %s", self, dest)
        return dest


def cache_dir() -> Path:
    """This machine's cache of objects read from buckets (``INVERSESCOPE_CACHE``)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "inversescope")
    root.mkdir(parents=True, exist_ok=True)
    return root


def machine_local(workdir: ObjectPath, rel: str) -> Path:
    """A path on this machine that stands for ``workdir / rel`` (what cannot live in a bucket,
    the labeller's SQLite memo): one per workdir URL under the cache."""
    digest = hashlib.sha256(str(workdir).encode()).hexdigest()[:16]
    return cache_dir() / "workdirs" / digest / rel


def probe(workdir: ObjectPath) -> None:
    """One listing request: raises ``BucketError`` (or ``FileNotFoundError`` for a missing
    bucket) with a one-line reason when the workdir cannot be reached."""
    workdir.is_dir()
