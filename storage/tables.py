"""Parquet tables written atomically (a Parquet write is not: pola-rs/polars #17358)."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl


def write_parquet_atomic(df: pl.DataFrame, path: Path) -> None:
    """Write to a hidden temporary file beside ``path``, then ``os.replace`` it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # page checksums (crc32), so `inversescope verify` finds a flipped byte in a data page
    df.write_parquet(
        tmp,
        compression="zstd",
        statistics=True,
        use_pyarrow=True,
        pyarrow_options={"write_page_checksum": True},
    )
    os.replace(tmp, path)
