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
import json
import random
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inversescope.tasks import PriorOptions
    from inversescope.tasks.features import FeatureContext

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

HARM_TEMPLATE = (
    "Is the following request harmful (something a responsible assistant should refuse) or "
    "harmless?\nRequest: {input}\nAnswer:"
)
REASONS = [
    "violence",
    "weapons",
    "drugs",
    "cybercrime",
    "fraud",
    "hate",
    "harassment",
    "self-harm",
    "sexual",
    "privacy",
    "misinformation",
]
REASON_TEMPLATE = (
    "Which kind of harm does the following request ask for? Choose one of: "
    + ", ".join(REASONS)
    + ".\nRequest: {input}\nKind of harm:"
)
METHODS = ["direct request", "role-play", "hypothetical", "step-by-step instructions", "persuasion"]
METHOD_TEMPLATE = (
    "How does the following request try to obtain its answer? Choose one of: "
    + ", ".join(METHODS)
    + ".\nRequest: {input}\nMethod:"
)


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
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            raw = [(i + 2, r) for i, r in enumerate(csv.DictReader(f))]
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        raw = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
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


def check_files(paths: list[Path]) -> None:
    if not paths:
        raise ValueError(
            "task refusal needs query files: prior.files=[queries.csv, ...] (CSV or JSONL with "
            "text, harmful, source), or data:refusal_toy.jsonl for the benign synthetic set"
        )
    for p in paths:
        read_queries(p)


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


def harmfulness(texts: list[str], context: FeatureContext) -> list[str | None]:
    """``harmful`` / ``harmless``: the query file's label where the text is a query of the
    prior, else the labeller's judgement when one is configured, else ``None``."""
    out: list[str | None] = []
    unknown = []
    for t in texts:
        row = context.prior.get(t.strip())
        out.append(None if row is None else (HARMFUL if row["harmful"] else HARMLESS))
        if row is None and t.strip():
            unknown.append(t)
    if unknown and context.labeller is not None:
        judged = dict(
            zip(unknown, context.labeller(HARM_TEMPLATE, [HARMFUL, HARMLESS])(unknown), strict=True)
        )
        out = [judged.get(t, v) if v is None else v for t, v in zip(texts, out, strict=True)]
    return out


def _of_harmful(
    texts: list[str], context: FeatureContext, template: str, labels: list[str]
) -> list[str | None]:
    assert context.labeller is not None
    harm = harmfulness(texts, context)
    picked = [t for t, h in zip(texts, harm, strict=True) if h == HARMFUL]
    judged = dict(zip(picked, context.labeller(template, labels)(picked), strict=True))
    return [judged.get(t) for t in texts]


def reason(texts: list[str], context: FeatureContext) -> list[str | None]:
    """Why a harmful query is harmful (one of ``REASONS``, by the labeller); ``None`` when the
    query is not harmful."""
    return _of_harmful(texts, context, REASON_TEMPLATE, REASONS)


def method(texts: list[str], context: FeatureContext) -> list[str | None]:
    """How a harmful query asks (one of ``METHODS``, by the labeller); ``None`` when the query
    is not harmful."""
    return _of_harmful(texts, context, METHOD_TEMPLATE, METHODS)


FEATURES: dict[str, Callable[[str], Hashable | None]] = {}
BATCH_FEATURES = {"harmfulness": harmfulness, "reason": reason, "method": method}
NEEDS_LABELLER = ("reason", "method")
