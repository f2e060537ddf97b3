"""Shards of a fanned-out stage: done-markers inside the stage's partial directory.

A sharded stage (extract, sample) splits its work into shards that write disjoint files or
regions. A shard writes its output, then its marker (atomically: a marker means the shard's
output is whole). A rerun skips every shard whose marker exists, whatever process or host wrote
it, and the commit step checks every marker before the stage's manifest is written.
"""

from __future__ import annotations

import json
from typing import Any

from inversescope.storage.artifacts import write_json_atomic
from inversescope.storage.files import Where, each

MARKERS = ".shards"


def marker_path(out: Where, shard_id: str) -> Where:
    return out / MARKERS / f"{shard_id}.json"


def mark_done(out: Where, shard_id: str, info: dict[str, Any]) -> None:
    """Record that shard ``shard_id`` wrote all its output (call after the output is written)."""
    (out / MARKERS).mkdir(exist_ok=True)
    write_json_atomic(marker_path(out, shard_id), {"id": shard_id, **info})


def is_done(out: Where, shard_id: str) -> bool:
    return marker_path(out, shard_id).is_file()


def read_markers(out: Where) -> dict[str, dict[str, Any]]:
    """Every marker of a partial directory, by shard id."""
    found = {}
    paths = sorted((out / MARKERS).glob("*.json"))
    for info in each(lambda p: json.loads(p.read_text(encoding="utf-8")), paths):
        found[info["id"]] = info
    return found


def done_ids(out: Where) -> set[str]:
    """The ids of every shard with a marker, from one listing (no marker is read)."""
    return {p.name[: -len(".json")] for p in (out / MARKERS).glob("*.json")}


def missing(out: Where, shard_ids: list[str]) -> list[str]:
    """The shards among ``shard_ids`` without a marker."""
    done = done_ids(out)
    return [s for s in shard_ids if s not in done]


def spread(n_units: int, n_shards: int) -> list[range]:
    """``n_units`` consecutive units in at most ``n_shards`` contiguous groups of near-equal
    size (the first groups one larger)."""
    n_shards = max(1, min(n_shards, n_units))
    size, extra = divmod(n_units, n_shards)
    out, start = [], 0
    for i in range(n_shards):
        stop = start + size + (1 if i < extra else 0)
        out.append(range(start, stop))
        start = stop
    return [r for r in out if len(r)]


# --- chunk-aligned row ranges (extract) -----------------------------------------------
def row_ranges(rows: dict[str, int], chunk_rows: int, n_shards: int | None) -> list[dict]:
    """Row ranges aligned to chunks, never across splits: one chunk each (``n_shards`` None) or
    about ``n_shards`` ranges of whole chunks."""
    chunks = [(split, start) for split, n in rows.items() for start in range(0, n, chunk_rows)]
    groups = (
        [[c] for c in chunks]
        if n_shards is None
        else [chunks[r.start : r.stop] for r in spread(len(chunks), n_shards)]
    )
    out = []
    for group in groups:
        for split in dict.fromkeys(s for s, _ in group):  # a group may straddle two splits
            starts = [start for s, start in group if s == split]
            stop = min(starts[-1] + chunk_rows, rows[split])
            out.append(
                {
                    "id": f"{split}-{starts[0]:010d}",
                    "split": split,
                    "start": starts[0],
                    "stop": stop,
                }
            )
    return out


def _covered(out: Where, chunk_rows: int) -> set[tuple[str, int]]:
    """(split, chunk start) of every chunk a done-marker covers."""
    done = set()
    for info in read_markers(out).values():
        done.update((info["split"], s) for s in range(info["start"], info["stop"], chunk_rows))
    return done


def ranges_todo(out: Where, shard_list: list[dict], chunk_rows: int) -> list[dict]:
    """The shards some of whose chunks no marker covers (markers of any earlier plan count)."""
    done = _covered(out, chunk_rows)
    return [
        s
        for s in shard_list
        if any((s["split"], c) not in done for c in range(s["start"], s["stop"], chunk_rows))
    ]
