"""IOI's prompt slots, parsed back from text against the prior's templates (the hypotheses
stage's candidates ``slot:...``): the template; the names in order of mention (``name#1``,
``name#2`` from the first clause, ``name#3`` the repeated one); the place; the item; and by
role the indirect object (``name.io``), the subject (``name.subject``) and the order (``ABBA``:
the subject is the second name of the first clause, ``BABA``: the first).

Apart from the prior (``tasks/ioi.py``), so that editing a slot reruns only ``hypotheses``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inversescope.tasks.candidates import Field, TemplateSlots, Values
from inversescope.tasks.ioi import NAMES, TEMPLATES

if TYPE_CHECKING:
    from inversescope.tasks.features import FeatureContext

_NAME_SET = frozenset(NAMES)
NAME, WORD = r"[A-Z][a-z]+", r"[a-z]+"  # as the built-in features parse (ioi_features)


def roles(filled: dict[str, str], context: FeatureContext) -> Values | None:
    """The generator's roles of a filling, or ``None`` for one it never makes (an unknown
    name, the same name twice in the first clause, a repeated name that is neither)."""
    n1, n2, s = filled["N1"], filled["N2"], filled["S"]
    if n1 == n2 or not {n1, n2, s} <= _NAME_SET or s not in (n1, n2):
        return None
    return {
        "name.io": n2 if s == n1 else n1,
        "name.subject": s,
        "order": "ABBA" if s == n2 else "BABA",
    }


SLOTS = TemplateSlots(
    templates=TEMPLATES,
    fields={
        "N1": Field("name", NAME),
        "N2": Field("name", NAME),
        "S": Field("name", NAME),
        "PLACE": Field("place", WORD),
        "OBJECT": Field("item", WORD),
    },
    roles=("name.io", "name.subject", "order"),
    assign=roles,
)
