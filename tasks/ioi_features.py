"""IOI's built-in features: ``subject`` (the name that occurs twice), ``object`` (the name that
occurs once), ``item`` (the thing given, e.g. "drink": the paper finds L9H3 carrying it) and
``place`` (e.g. "store"), defined on well-formed IOI prompts and ``None`` elsewhere.

Kept apart from the prior (``tasks/ioi.py``), so that editing a feature reruns only the stages
``label`` and ``fcr``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable

from inversescope.tasks.ioi import NAMES, TEMPLATES

_NAME_SET = frozenset(NAMES)
_SLOT = re.compile(r"\{(N1|N2|S|PLACE|OBJECT)\}")
_SLOT_PATTERN = {
    "N1": r"(?P<n1>[A-Z][a-z]+)",
    "N2": r"(?P<n2>[A-Z][a-z]+)",
    "S": r"(?P<s>[A-Z][a-z]+)",
    "PLACE": r"(?P<place>[a-z]+)",
    "OBJECT": r"(?P<object>[a-z]+)",
}


def _template_regex(template: str) -> re.Pattern[str]:
    parts: list[str] = []
    pos = 0
    for m in _SLOT.finditer(template):
        parts.append(re.escape(template[pos : m.start()]))
        parts.append(_SLOT_PATTERN[m.group(1)])
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts))


_TEMPLATE_REGEXES = tuple(_template_regex(t) for t in TEMPLATES)


def parse(text: str) -> dict[str, str] | None:
    """The names, item and place of a well-formed IOI prompt, or ``None``.

    Well-formed: the whole text (surrounding whitespace aside) is one of the templates, with
    two distinct known names in the first clause and one of them repeated as the subject.
    Place and object may be any lower-case word.
    """
    stripped = text.strip()
    for regex in _TEMPLATE_REGEXES:
        m = regex.fullmatch(stripped)
        if m is None:
            continue
        n1, n2, s = m.group("n1"), m.group("n2"), m.group("s")
        if n1 == n2 or not {n1, n2, s} <= _NAME_SET or s not in (n1, n2):
            return None
        return {
            "subject": s,
            "object": n2 if s == n1 else n1,
            "item": m.group("object"),
            "place": m.group("place"),
        }
    return None


def subject(text: str) -> str | None:
    """The name that occurs twice (the subject), or ``None`` if ``text`` is not an IOI prompt."""
    parsed = parse(text)
    return None if parsed is None else parsed["subject"]


def object(text: str) -> str | None:  # noqa: A001 - the paper's feature name
    """The name that occurs once (the indirect object), or ``None`` if not an IOI prompt."""
    parsed = parse(text)
    return None if parsed is None else parsed["object"]


def item(text: str) -> str | None:
    """The thing given (the template's object word, e.g. ``drink``), or ``None`` if ``text`` is
    not an IOI prompt."""
    parsed = parse(text)
    return None if parsed is None else parsed["item"]


def place(text: str) -> str | None:
    """Where the scene happens (e.g. ``store``), or ``None`` if ``text`` is not an IOI prompt."""
    parsed = parse(text)
    return None if parsed is None else parsed["place"]


FEATURES: dict[str, Callable[[str], Hashable | None]] = {
    "subject": subject,
    "object": object,
    "item": item,
    "place": place,
}
