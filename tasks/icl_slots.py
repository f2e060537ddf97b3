"""ICL's prompt slots, parsed back from text against the prior's prompt form (the hypotheses
stage's candidates ``slot:...``): each demonstration's source and target word (``src#i``,
``tgt#i``) and the input word (``input``); by role, under the run's word list, the language
of each demonstration word (``lang.src#i``, ``lang.tgt#i``: a word listed in several
languages gets them all, ``english|french``), the one language all demonstrations' sources
(targets) are in (``lang.src``, ``lang.tgt``; else undefined), their direction, and the input
word's language.

Apart from the prior (``tasks/icl.py``), so that editing a slot reruns only ``hypotheses``.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from inversescope.tasks.candidates import Field, TemplateSlots, Values
from inversescope.tasks.icl import LANGUAGES, SHOTS, load_words, words_path

if TYPE_CHECKING:
    from inversescope.tasks.features import FeatureContext

WORD = r"[^\s,]+"
SHOT_RANGE = range(1, SHOTS + 1)
TEMPLATE = (
    "".join(f"Input: {{SRC{i}}}, Output: {{TGT{i}}}\n" for i in SHOT_RANGE)
    + "Input: {INPUT}, Output:"
)


@cache
def languages_of(words: str | None) -> dict[str, str]:
    """Word -> the languages whose column of the word list holds it (joined by ``|``)."""
    found: dict[str, list[str]] = {}
    for row in load_words(words):
        for lang in LANGUAGES:
            found.setdefault(row[lang], []).append(lang)
    return {w: "|".join(sorted(set(langs))) for w, langs in found.items()}


def _shared(values: list[str | None]) -> str | None:
    """The one language every demonstration word is in, else ``None``."""
    if any(v is None for v in values):
        return None
    common = set.intersection(*(set(v.split("|")) for v in values if v is not None))
    return common.pop() if len(common) == 1 else None


def roles(filled: dict[str, str], context: FeatureContext) -> Values:
    lang = languages_of(words_path(context.files))
    src = [lang.get(filled[f"SRC{i}"]) for i in SHOT_RANGE]
    tgt = [lang.get(filled[f"TGT{i}"]) for i in SHOT_RANGE]
    a, b = _shared(src), _shared(tgt)
    return {
        **{f"lang.src#{i}": v for i, v in zip(SHOT_RANGE, src, strict=True)},
        **{f"lang.tgt#{i}": v for i, v in zip(SHOT_RANGE, tgt, strict=True)},
        "lang.src": a,
        "lang.tgt": b,
        "direction": f"{a}->{b}" if a and b else None,
        "lang.input": lang.get(filled["INPUT"]),
    }


SLOTS = TemplateSlots(
    templates=(TEMPLATE,),
    fields={
        **{f"SRC{i}": Field("src", WORD) for i in SHOT_RANGE},
        **{f"TGT{i}": Field("tgt", WORD) for i in SHOT_RANGE},
        "INPUT": Field("input", WORD),
    },
    roles=(
        *(f"lang.src#{i}" for i in SHOT_RANGE),
        *(f"lang.tgt#{i}" for i in SHOT_RANGE),
        "lang.src",
        "lang.tgt",
        "direction",
        "lang.input",
    ),
    assign=roles,
)
