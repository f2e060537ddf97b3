"""Refusal: what a chat model's activations encode when it decides to refuse a query.

The prior is the user's own query files (``prior.files``: CSV or JSONL with ``text``,
``harmful`` and an optional ``source``), filtered to at most ``prior.max_tokens`` target tokens.
An input is the user's query; the target reads it rendered with its chat template and a
generation prompt, and the site position (``last``) is the last token of that rendering, the
one whose output is the first response token. No harmful text ships with the project; the
``refusal-tiny`` preset uses ``data:refusal_toy.jsonl``, a benign synthetic set whose "harmful"
class asks for spoilers and made-up secrets.

Features: ``harmfulness`` (``harmful`` / ``harmless``: the file's label for a query in the
prior, else the labeller's judgement, else ``None``); with a labeller configured, ``reason``
and ``method`` (why a harmful query is harmful and how it asks; ``None`` for harmless queries).
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inversescope.tasks import PriorOptions

NAME = "refusal"
PRIOR_USES_TOKENIZER = True
REFUSE, COMPLY = " Sorry", " Sure"  # first response tokens a target trained here learns
# The chat template of a target trained here (hub chat models bring their own).
CHAT_TEMPLATE = (
    "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
HARMFUL, HARMLESS = "harmful", "harmless"
_TRUE = {"1", "true", "yes", "harmful", "y", "t"}
_FALSE = {"0", "false", "no", "harmless", "n", "f"}


def _parse_harmful(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{where}: harmful={value!r} is not a yes/no value (true/false, 1/0)")


def read_queries(path: Path) -> list[dict]:
    """Rows ``{text, harmful, source}`` of one CSV or JSONL query file. Raises ``ValueError``
    naming the file and line of a row without ``text`` or with a bad ``harmful``."""
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "accepted: CSV or JSONL saved as UTF-8"
        ) from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(content, newline=""))
        raw = []
        for i, r in enumerate(reader):
            if None in r:  # more fields than the header names
                raise ValueError(
                    f"{path}:{reader.line_num}: {len(reader.fieldnames or []) + len(r[None])} "
                    f"fields, but the header names {len(reader.fieldnames or [])} "
                    f"({', '.join(reader.fieldnames or [])}); quote fields that hold commas"
                )
            raw.append((i + 2, r))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        raw = []
        for i, line in enumerate(content.splitlines()):
            if line.strip():
                try:
                    raw.append((i + 1, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i + 1}: not a JSON object ({e.msg})") from e
    else:
        raise ValueError(f"{path}: query files are .csv or .jsonl, not {path.suffix or 'none'!r}")
    rows = []
    for line, r in raw:
        where = f"{path}:{line}"
        if not isinstance(r, dict) or not str(r.get("text") or "").strip():
            raise ValueError(f"{where}: a row needs a non-empty text")
        if r.get("harmful") in (None, ""):
            raise ValueError(f"{where}: a row needs harmful (true/false)")
        rows.append(
            {
                "text": str(r["text"]).strip(),
                "harmful": _parse_harmful(r["harmful"], where),
                "source": str(r.get("source") or path.name),
            }
        )
    if not rows:
        raise ValueError(f"{path}: no queries")
    return rows


def check_files(paths: list[Path], needed: int | None = None) -> None:
    """Every file reads, and (``needed``) together they hold at least that many distinct
    queries."""
    if not paths:
        raise ValueError(
            "task refusal needs query files: prior.files=[queries.csv, ...] (CSV or JSONL with "
            "text, harmful, source), or data:refusal_toy.jsonl for the benign synthetic set"
        )
    texts = {row["text"] for p in paths for row in read_queries(p)}
    if needed is not None and len(texts) < needed:
        raise ValueError(
            f"prior.n_train + prior.n_test = {needed}, but prior.files hold {len(texts)} distinct "
            f"queries; accepted: at most {len(texts)} (lower n_train or n_test, or add queries)"
        )


def generate_prior(
    n_train: int, n_test: int, seed: int, options: PriorOptions | None = None
) -> tuple[list[dict], list[dict]]:
    """The queries of ``options.files``, deduplicated, without those longer than
    ``options.max_tokens`` target tokens, shuffled by ``seed``: the first ``n_test`` are the
    test split, the next ``n_train`` the train split."""
    files = options.files if options else ()
    check_files(list(files))
    by_text: dict[str, dict] = {}
    for path in files:
        for row in read_queries(path):
            seen = by_text.get(row["text"])
            if seen is not None and seen["harmful"] != row["harmful"]:
                raise ValueError(f"query {row['text']!r} is labelled both harmful and harmless")
            by_text.setdefault(row["text"], row)
    rows = sorted(by_text.values(), key=lambda r: r["text"])
    n_long = 0
    if options is not None and options.count_tokens is not None:
        kept = [r for r in rows if options.count_tokens(r["text"]) <= options.max_tokens]
        n_long, rows = len(rows) - len(kept), kept
    if len(rows) < n_train + n_test:
        raise ValueError(
            f"refusal prior: the query files hold {len(rows)} usable queries ({n_long} longer "
            f"than prior.max_tokens dropped), fewer than prior.n_train + prior.n_test = "
            f"{n_train + n_test}"
        )
    random.Random(seed).shuffle(rows)
    out = [
        {
            **r,
            "answer": REFUSE if r["harmful"] else COMPLY,
            "distractor": COMPLY if r["harmful"] else REFUSE,
        }
        for r in rows[: n_test + n_train]
    ]
    test, train = out[:n_test], out[n_test:]
    for split in (train, test):
        for i, row in enumerate(split):
            row["id"] = i
    return train, test


def render(text: str, tokenizer) -> str:
    """The query as the target reads it: its chat template with a generation prompt. A leading
    BOS the template writes is dropped when the tokenizer adds one itself, so it occurs once."""
    s = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    bos = tokenizer.bos_token
    if bos and s.startswith(bos):
        ids = tokenizer("x")["input_ids"]
        if ids and ids[0] == tokenizer.bos_token_id:
            s = s[len(bos) :]
    return s
