"""ICL's built-in features: ``input`` (the word after the last ``Input:``); ``task_rule`` (the
translation direction every demonstration shows, under the run's word list); with a labeller
configured, ``task`` (the paper's Task(x): the labeller names the translation the
demonstrations show, constrained to "Language_1-to-Language_2 translation", so it is defined
also where demonstrations are imperfect). ``None`` on malformed text.

Kept apart from the prior (``tasks/icl.py``), so that editing a feature reruns only the stages
``label`` and ``fcr``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from inversescope.tasks.icl import LANGUAGES, direction_name, lexicon, words_path

if TYPE_CHECKING:
    from inversescope.tasks.features import FeatureContext

_PAIR = re.compile(r"Input: (?P<src>[^\s,]+), Output: (?P<tgt>[^\s,]+)")
_PROMPT = re.compile(
    r"(?P<demos>(?:Input: [^\s,]+, Output: [^\s,]+\n)+)Input: (?P<query>[^\s,]+), Output:"
)


def parse(text: str) -> dict[str, str] | None:
    m = _PROMPT.fullmatch(text.strip())
    if m is None:
        return None
    return {"demos": m.group("demos"), "query": m.group("query")}


def task_of(text: str, words: str | None = None) -> str | None:
    """The direction every demonstration is a translation in (``english->french``, ...) under
    the word list ``words`` (default: the shipped one), or ``None`` when the text is malformed
    or no single direction fits all demonstrations."""
    parsed = parse(text)
    if parsed is None:
        return None
    pairs = [(m.group("src"), m.group("tgt")) for m in _PAIR.finditer(parsed["demos"])]
    fits = [d for d, lex in lexicon(words).items() if all(lex.get(s) == t for s, t in pairs)]
    return direction_name(fits[0]) if len(fits) == 1 else None


def task_rule(texts: list[str], context: FeatureContext) -> list[str | None]:
    """Feature ``task_rule``: :func:`task_of` under the run's word list."""
    words = words_path(context.files)
    return [task_of(t, words) for t in texts]


TASK_LABELS = [
    f"{a.capitalize()}-to-{b.capitalize()} translation"
    for a in LANGUAGES
    for b in LANGUAGES
    if a != b
]
TASK_TEMPLATE = (
    "The following examples show a word translation task.\n{input}\nWhich translation do "
    "they show? Answer as Language_1-to-Language_2 translation.\nAnswer:"
)


def task(texts: list[str], context: FeatureContext) -> list[str | None]:
    """Feature ``task`` (the paper's): the labeller's choice among ``TASK_LABELS`` for a text
    with at least one ``Input: ..., Output: ...`` demonstration; ``None`` for other text."""
    assert context.labeller is not None
    picked = [t for t in texts if _PAIR.search(t)]
    judged = dict(zip(picked, context.labeller(TASK_TEMPLATE, TASK_LABELS)(picked), strict=True))
    return [judged.get(t) for t in texts]


def input(text: str) -> str | None:  # noqa: A001 - the paper's feature name
    """The word after the last ``Input:``, or ``None`` when the text is malformed."""
    parsed = parse(text)
    return None if parsed is None else parsed["query"]


FEATURES: dict[str, Callable[[str], Hashable | None]] = {"input": input}
BATCH_FEATURES = {"task_rule": task_rule, "task": task}
NEEDS_LABELLER = ("task",)
