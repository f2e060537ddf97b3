"""Artifacts on disk: cache keys, atomic directories, locks, Zarr activation stores, Parquet."""
