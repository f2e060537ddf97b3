"""ICL's built-in features: ``task`` (the translation direction every demonstration shows, under
the run's word list) and ``input`` (the word after the last ``Input:``); ``None`` on malformed
text.

Kept apart from the prior (``tasks/icl.py``), so that editing a feature reruns only the stages
``label`` and ``fcr``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from inversescope.tasks.icl import direction_name, lexicon, words_path

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


def task(texts: list[str], context: FeatureContext) -> list[str | None]:
    """Feature ``task``: :func:`task_of` under the run's word list."""
    words = words_path(context.files)
    return [task_of(t, words) for t in texts]


def input(text: str) -> str | None:  # noqa: A001 - the paper's feature name
    """The word after the last ``Input:``, or ``None`` when the text is malformed."""
    parsed = parse(text)
    return None if parsed is None else parsed["query"]


FEATURES: dict[str, Callable[[str], Hashable | None]] = {"input": input}
BATCH_FEATURES = {"task": task}
