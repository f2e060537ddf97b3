"""A persistent string -> string mapping in SQLite: the labeller's memo of (model, prompt,
input) -> label, shared by every run of a workdir, so relabelling costs nothing twice."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, MutableMapping
from pathlib import Path


class SqliteCache(MutableMapping[str, str]):
    """Each write commits (WAL journal), so a killed labelling run keeps what it computed."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS memo (key TEXT PRIMARY KEY, value TEXT)")

    def __getitem__(self, key: str) -> str:
        row = self.db.execute("SELECT value FROM memo WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return row[0]

    def __contains__(self, key: object) -> bool:
        return self.db.execute("SELECT 1 FROM memo WHERE key = ?", (key,)).fetchone() is not None

    def __setitem__(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO memo VALUES (?, ?)", (key, value))

    def update_many(self, items: dict[str, str]) -> None:
        """Write several entries in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO memo VALUES (?, ?)", items.items())

    def __delitem__(self, key: str) -> None:
        if self.db.execute("DELETE FROM memo WHERE key = ?", (key,)).rowcount == 0:
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for (k,) in self.db.execute("SELECT key FROM memo").fetchall())

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM memo").fetchone()[0]

    def close(self) -> None:
        self.db.close()
