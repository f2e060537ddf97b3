"""Refusal's prompt slots (the hypotheses stage's candidates ``slot:...``): the prior draws its
queries from files, so a query's slots are its row's: ``harmfulness`` (the file's label:
``harmful`` / ``harmless``) and ``category`` (its ``source``: the file or data set it came
from). Text that is no query of the prior has none.

Apart from the prior (``tasks/refusal.py``), so that editing a slot reruns only
``hypotheses``.
"""

from __future__ import annotations

from inversescope.tasks.candidates import PriorSlots
from inversescope.tasks.refusal import HARMFUL, HARMLESS

SLOTS = PriorSlots(
    columns={
        "harmfulness": lambda row: HARMFUL if row["harmful"] else HARMLESS,
        "category": lambda row: row.get("source"),
    }
)
