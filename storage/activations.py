"""Zarr v3 activation stores: ``activations.zarr/<split>/<site>``, one (rows, d) array per site.

Arrays are created at their full shape up front (no resize while writing), chunked along rows,
Blosc-zstd compressed with bit shuffle (level 3: about the ratio of level 5
at 3.5x the write speed on activations) and crc32c-checksummed. Rows are written one whole
chunk at a time by a single writer, and ``progress.json`` beside the store records, per split,
how many leading rows are committed, so an interrupted extraction resumes there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from inversescope.storage.artifacts import write_json_atomic

STORE = "activations.zarr"
PROGRESS = "progress.json"


def _compressors() -> list:
    return [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec()]


class ActivationWriter:
    """Writes whole row-chunks of every site of one store and records committed rows."""

    def __init__(
        self,
        root: Path,
        rows: dict[str, int],
        sites: dict[str, int],
        chunk_rows: int,
        dtype: str,
        attrs: dict[str, Any],
    ):
        self.root, self.rows, self.chunk_rows, self.dtype = root, rows, chunk_rows, dtype
        self.group = zarr.open_group(root / STORE, mode="a")
        self.group.attrs.update(attrs)
        self.arrays: dict[tuple[str, str], zarr.Array] = {}
        for split, n in rows.items():
            for site, d in sites.items():
                self.arrays[split, site] = self._array(split, site, n, d, attrs)
        self.progress_path = root / PROGRESS
        self.committed: dict[str, int] = {split: 0 for split in rows}
        if self.progress_path.exists():
            self.committed.update(json.loads(self.progress_path.read_text()))

    def _array(self, split: str, site: str, n: int, d: int, attrs: dict[str, Any]) -> zarr.Array:
        name = f"{split}/{site}"
        if name in self.group:
            arr = self.group[name]
            if arr.shape == (n, d) and arr.chunks == (self.chunk_rows, d):
                return arr
            del self.group[name]
        return self.group.create_array(
            name,
            shape=(n, d),
            chunks=(self.chunk_rows, d),
            dtype=self.dtype,
            compressors=_compressors(),
            fill_value=np.nan,
            attributes={**attrs, "site": site, "split": split},
        )

    def chunks_todo(self, split: str) -> Iterator[tuple[int, int]]:
        """(start, stop) of each chunk of ``split`` not yet committed, in order."""
        n = self.rows[split]
        for start in range(self.committed[split], n, self.chunk_rows):
            yield start, min(start + self.chunk_rows, n)

    def write_chunk(self, split: str, start: int, values: dict[str, np.ndarray]) -> None:
        """Write rows ``start:start+len`` of every site, then mark them committed."""
        if start != self.committed[split] or start % self.chunk_rows:
            raise RuntimeError(f"chunk at row {start} of {split} is out of order")
        stop = None
        for (sp, site), arr in self.arrays.items():
            if sp != split:
                continue
            block = values[site]
            stop = start + block.shape[0]
            arr[start:stop] = block.astype(self.dtype, copy=False)
        assert stop is not None
        self.committed[split] = stop
        write_json_atomic(self.progress_path, self.committed)

    def complete(self) -> bool:
        return all(self.committed[s] == n for s, n in self.rows.items())


class ActivationStore:
    """Read side of a committed store."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.group = zarr.open_group(self.root / STORE, mode="r")

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
        """Rows ``start:stop`` as float32, whatever the stored dtype."""
        return np.asarray(self.array(split, site)[start:stop], dtype=np.float32)
