"""Zarr v3 activation stores: ``activations.zarr/<split>/<site>``, one (rows, d) array per site.

Arrays are created at their full shape once, before any row is written (no resize while
writing), chunked along rows, Blosc-zstd compressed with bit shuffle (level 3: about the ratio
of level 5 at 3.5x the write speed on activations) and crc32c-checksummed. Writers write whole
row chunks only (the last chunk of a split may be short), so writers of different row ranges
aligned to chunks never touch the same chunk file and may run in different processes or hosts
(zarr-python #3514: two writers in one chunk or shard can lose data). Which ranges are done is
recorded by the writer's caller (``storage.shards``).

In a bucket the store is zarr's ``ObjectStore`` on the workdir's obstore client: every chunk is
one object (the same bytes as the chunk file on disk), and a writer puts the chunks of one row
range, one per site, concurrently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from inversescope.storage.files import Where, each, is_remote

STORE = "activations.zarr"


def zarr_store(store_dir: Where, read_only: bool = False):
    """What ``zarr.open_group`` opens: the directory on disk, or an ``ObjectStore`` on the
    bucket prefix."""
    if not is_remote(store_dir):
        return store_dir
    from zarr.storage import ObjectStore

    from inversescope.storage.buckets import store

    return ObjectStore(store(str(store_dir)), read_only=read_only)


def open_group(store_dir: Where, mode: str):
    return zarr.open_group(zarr_store(store_dir, read_only=mode == "r"), mode=mode)


class CorruptActivations(RuntimeError):
    """A chunk of an activation store fails its checksum or cannot be decoded."""


def _compressors() -> list:
    return [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec()]


def create_store(
    root: Where,
    rows: dict[str, int],
    sites: dict[str, int],
    chunk_rows: int,
    dtype: str,
    attrs: dict[str, Any],
) -> None:
    """Create every (split, site) array at its full shape; keep arrays that already have it (a
    resumed run keeps what it wrote). Call once, before any writer starts."""
    group = open_group(root / STORE, mode="a")
    if dict(group.attrs) != attrs:
        group.attrs.update(attrs)

    def ensure(item: tuple[str, int, str, int]) -> None:
        split, n, site, d = item
        name = f"{split}/{site}"
        if name in group:
            arr = group[name]
            if arr.shape == (n, d) and arr.chunks == (chunk_rows, d) and arr.dtype == dtype:
                return
            del group[name]
        group.create_array(
            name,
            shape=(n, d),
            chunks=(chunk_rows, d),
            dtype=dtype,
            compressors=_compressors(),
            fill_value=np.nan,
            attributes={**attrs, "site": site, "split": split},
        )

    items = [(split, n, site, d) for split, n in rows.items() for site, d in sites.items()]
    if is_remote(root):  # a few requests per array: every array at once
        for split in rows:  # the split groups first, so no two arrays create one
            group.require_group(split)
        each(ensure, items)
    else:
        for item in items:
            ensure(item)


class RegionWriter:
    """Writes chunk-aligned row ranges of every site of one split of an existing store."""

    def __init__(self, root: Where, split: str, sites: list[str]):
        group = open_group(root / STORE, mode="r+")
        self.arrays = {site: group[f"{split}/{site}"] for site in sites}
        first = next(iter(self.arrays.values()))
        self.rows, self.chunk_rows = first.shape[0], first.chunks[0]
        self.dtype = first.dtype
        self.remote = is_remote(root)

    def write(self, start: int, values: dict[str, np.ndarray]) -> int:
        """Write rows ``start:start+len`` of every site; returns the stop row. The range must
        start on a chunk boundary and end on one (or at the split's end)."""
        stop = start + next(iter(values.values())).shape[0]
        if start % self.chunk_rows or (stop % self.chunk_rows and stop != self.rows):
            raise ValueError(
                f"rows {start}:{stop} are not aligned to chunks of {self.chunk_rows} rows"
            )

        def put(site: str) -> None:
            self.arrays[site][start:stop] = values[site].astype(self.dtype, copy=False)

        if self.remote:  # one request per chunk: put them together
            each(put, list(self.arrays))
        else:
            for site in self.arrays:
                put(site)
        return stop


class ActivationStore:
    """Read side of a committed store."""

    def __init__(self, root: Where):
        self.root = root if is_remote(root) else Path(root)
        self.group = open_group(self.root / STORE, mode="r")

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def array(self, split: str, site: str) -> zarr.Array:
        try:
            return self.group[f"{split}/{site}"]
        except KeyError:
            raise KeyError(
                f"no activations for site {site!r} in split {split!r} of {self.root}; "
                f"stored sites: {self.sites(split)}"
            ) from None

    def sites(self, split: str) -> list[str]:
        return sorted(self.group[split].array_keys()) if split in self.group else []

    def read(self, split: str, site: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` as float32, whatever the stored dtype. A chunk that fails its
        crc32c checksum raises ``CorruptActivations`` naming the chunk files: never garbage."""
        arr = self.array(split, site)
        try:
            values = arr[start:stop]
        except ValueError as e:  # the crc32c codec's "checksum do not match", or a bad decode
            lo, hi, _ = slice(start, stop).indices(arr.shape[0])
            bad = bad_chunks(arr, self.root / STORE, lo, hi)
            if not bad:
                raise
            files = "; ".join(f"{path} ({why})" for path, why in bad)
            raise CorruptActivations(
                f"activations {split}/{site} rows {lo}:{hi} of {self.root} are corrupt: {files}"
            ) from e
        return np.asarray(values, dtype=np.float32)


def chunk_path(arr: zarr.Array, store_dir: Where, index: tuple[int, ...]) -> Where:
    """The file of chunk ``index`` of ``arr`` (the default v3 key encoding: ``c/<i>/<j>``)."""
    return store_dir / arr.path / arr.metadata.encode_chunk_key(index)


def bad_chunks(
    arr: zarr.Array, store_dir: Where, start: int = 0, stop: int | None = None
) -> list[tuple[Where, str]]:
    """(chunk file, why) of every chunk of rows ``start:stop`` of a 2-d ``arr`` that is missing
    (it would read as the fill value) or fails to decode (checksum, compression)."""
    step = arr.chunks[0]
    stop = arr.shape[0] if stop is None else stop
    found = []
    present = None
    if is_remote(store_dir):  # one listing instead of a request per chunk
        present = {p.key for p in (store_dir / arr.path).files()}
    for i in range(start // step, -(-stop // step)):
        for j in range(arr.cdata_shape[1]):
            path = chunk_path(arr, store_dir, (i, j))
            if not (path.key in present if present is not None else path.is_file()):
                found.append((path, "missing chunk file (it would read as the fill value)"))
                continue
            try:
                arr.get_block_selection((i, j))
            except Exception as e:  # any failure to decode is corruption
                found.append((path, f"{type(e).__name__}: {e}"))
    return found
