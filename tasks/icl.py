"""In-context learning (ICL): 4-shot word translation, as in the paper's Gemma-2 experiment.

    "Input: dog, Output: chien\nInput: cat, Output: chat\n ... Input: water, Output:"

Six directions: English -> French / Italian / Spanish and back. Word pairs come from the
package's list (``data/icl_words.csv``: one row per concept, a single word in each language,
no word twice within a language) or from a user's CSV with the same columns.
"""

from __future__ import annotations

import csv
import random
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from inversescope.tasks.splits import unique_splits

if TYPE_CHECKING:
    from inversescope.tasks import PriorOptions

NAME = "icl"
LANGUAGES = ("english", "french", "italian", "spanish")
DIRECTIONS: tuple[tuple[str, str], ...] = tuple(
    [("english", lang) for lang in LANGUAGES[1:]] + [(lang, "english") for lang in LANGUAGES[1:]]
)
SHOTS = 4
_WORD = re.compile(r"[^\s,]+")


def direction_name(direction: tuple[str, str]) -> str:
    return f"{direction[0]}->{direction[1]}"


@cache
def load_words(path: str | None = None) -> tuple[dict[str, str], ...]:
    """Rows of the word list: the packaged one, or a user's CSV with the same columns. Raises
    ``ValueError`` naming the file when a column is missing, a cell is not one word, a word occurs
    twice within a language, or there are fewer rows than a prompt needs."""
    source = Path(path) if path else Path(str(resources.files(__package__) / "data"))
    if not path:
        source = source / "icl_words.csv"
    with source.open(encoding="utf-8", newline="") as f:
        rows = tuple({k: (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(f))
    missing = set(LANGUAGES) - set(rows[0] if rows else ())
    if missing:
        raise ValueError(f"word list {source}: missing columns {sorted(missing)}")
    if len(rows) < SHOTS + 1:
        raise ValueError(f"word list {source}: {len(rows)} rows, a prompt needs {SHOTS + 1}")
    for lang in LANGUAGES:
        words = [r[lang] for r in rows]
        bad = [w for w in words if not _WORD.fullmatch(w)]
        if bad:
            raise ValueError(f"word list {source}: {lang} {bad[0]!r} is not a single word")
        dup = sorted({w for w in words if words.count(w) > 1})
        if dup:
            raise ValueError(f"word list {source}: {lang} {dup[0]!r} occurs more than once")
    return rows


def check_files(paths: list[Path], needed: int | None = None) -> None:
    """At most one word-list CSV, well-formed (prompts are drawn from combinations of its
    rows, so any ``needed`` number of them can be made)."""
    if len(paths) > 1:
        raise ValueError(f"icl takes at most one word list in prior.files, got {len(paths)}")
    if paths:
        load_words(str(paths[0]))


def words_path(files) -> str | None:
    return str(files[0]) if files else None


@cache
def lexicon(path: str | None = None) -> dict[tuple[str, str], dict[str, str]]:
    """For each direction, source word -> target word."""
    rows = load_words(path)
    return {(s, t): {r[s]: r[t] for r in rows} for s, t in DIRECTIONS}


def make_prompt(rng: random.Random, rows=None) -> dict[str, object]:
    rows = rows or load_words()
    direction = rng.choice(DIRECTIONS)
    src, tgt = direction
    picked = rng.sample(rows, SHOTS + 1)
    demos = "".join(f"Input: {r[src]}, Output: {r[tgt]}\n" for r in picked[:SHOTS])
    query = picked[SHOTS]
    # a wrong answer for the accuracy check: the query's translation into another language
    other = next(lang for lang in LANGUAGES if lang not in direction)
    return {
        "text": f"{demos}Input: {query[src]}, Output:",
        "task": direction_name(direction),
        "input": query[src],
        "answer": " " + query[tgt],
        "distractor": " " + query[other],
    }


def generate_prior(
    n_train: int, n_test: int, seed: int, options: PriorOptions | None = None
) -> tuple[list[dict], list[dict]]:
    """Disjoint train and test prompts, deterministic in ``seed``; ``id`` is the row number."""
    rows = load_words(words_path(options.files if options else ()))
    return unique_splits(lambda rng: make_prompt(rng, rows), n_train, n_test, seed)
