"""Parquet tables written atomically (a Parquet write is not: pola-rs/polars #17358), on disk
or in a bucket (one PUT of the same bytes), and read back from either."""

from __future__ import annotations

import io
import os

import polars as pl

from inversescope.storage.files import Where, each, is_remote


def _write(df: pl.DataFrame, target) -> None:
    # page checksums (crc32), so `inversescope verify` finds a flipped byte in a data page
    df.write_parquet(
        target,
        compression="zstd",
        statistics=True,
        use_pyarrow=True,
        pyarrow_options={"write_page_checksum": True},
    )


def write_parquet_atomic(df: pl.DataFrame, path: Where) -> None:
    """Write to a hidden temporary file beside ``path``, then ``os.replace`` it into place; in
    a bucket, the same bytes in one PUT."""
    if is_remote(path):
        buf = io.BytesIO()
        _write(df, buf)
        path.write_bytes(buf.getvalue())
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write(df, tmp)
    os.replace(tmp, path)


def read_parquet(path: Where) -> pl.DataFrame:
    if is_remote(path):
        return pl.read_parquet(io.BytesIO(path.read_bytes()))
    return pl.read_parquet(path)


def scan_parquet(paths: list[Where]) -> pl.LazyFrame:
    """Several Parquet files as one LazyFrame: scanned lazily on disk; from a bucket fetched
    concurrently through the workdir's own client (its credentials and endpoint), then lazy."""
    if paths and is_remote(paths[0]):
        return pl.concat(each(read_parquet, list(paths))).lazy()
    return pl.scan_parquet([str(p) for p in paths])
