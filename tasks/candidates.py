"""Candidate features built without code, for the hypotheses stage.

Each candidate is a normal feature (a name; a label per input text, ``None`` where undefined):

- ``tok[read]``, ``tok[read-1]`` ... ``tok[read-8]``: the token (as text) at that offset from
  the read position (the site's position: the last token of what the target reads);
- ``tok[0]`` ... ``tok[7]``: the token at that absolute position of what the target reads
  (its prefix and chat template included: a target trained here reads ``<eos>`` first);
- ``n_tokens``: the length of what the target reads, in buckets of ``LENGTH_BUCKET`` tokens;
- ``slot:...``: every variable slot of the task's prompt generator, parsed back from the text
  (``TemplateSlots``: against the task's own templates; ``PriorSlots``: the prior's row of a
  known prompt). A text that does not parse has no slot values;
- the task's built-in features and the user's, under their own names (labelled by the label
  stage).

A task declares its slots in one place, ``SLOTS`` in ``tasks/<task>_slots.py``; a task without
that module gets the token, length and feature candidates. The slot modules are apart from the
prior (``tasks/<task>.py``), whose key every stage reads: editing a slot reruns only the
hypotheses stage.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from inversescope.tasks.features import FeatureContext

READ_OFFSETS: tuple[int, ...] = tuple(range(9))
POSITIONS: tuple[int, ...] = tuple(range(8))
LENGTH_BUCKET = 4
SLOT_PREFIX = "slot:"
# family of each candidate, in the order ties and aliases prefer them
FAMILIES: tuple[str, ...] = ("feature", "slot", "token_offset", "token_position", "length")

Values = dict[str, str | None]  # slot name -> value
Labels = dict[str, list[str | None]]  # candidate name -> label of each text


@dataclass(frozen=True)
class Candidate:
    name: str
    family: str  # one of FAMILIES


class Slots(Protocol):
    """A task's slot declaration: the slot names, and their values for texts."""

    needs_prior: bool  # parse reads ``context.prior`` (the prior's rows by text)

    @property
    def names(self) -> tuple[str, ...]: ...

    def parse(self, texts: list[str], context: FeatureContext) -> list[Values | None]: ...


@dataclass(frozen=True)
class Field:
    """One placeholder of a task's templates: the kind of value it holds (placeholders of one
    kind are numbered by order of appearance) and the text a filled value matches."""

    kind: str
    pattern: str


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class TemplateSlots:
    """Slots of a generator that fills ``{PLACEHOLDER}`` templates. A text parses when it
    (surrounding whitespace aside) is one of the templates with every placeholder filled by
    text matching its field's pattern (a placeholder used twice, by the same text). Slots:

    - ``template``: the template's index (when there are several);
    - ``<kind>`` or ``<kind>#i``: the i-th filled placeholder of that kind in the text (numbered
      when some template has several);
    - ``roles``: named by ``assign(placeholder values, context)``, which returns them (a dict
      over ``roles``) or ``None`` when the filling is not one the generator makes."""

    templates: tuple[str, ...]
    fields: Mapping[str, Field]
    roles: tuple[str, ...] = ()
    assign: Callable[[dict[str, str], FeatureContext], Values | None] | None = None
    needs_prior: bool = False

    @cached_property
    def _compiled(self) -> list[tuple[re.Pattern[str], list[str]]]:
        """Per template: its regex and its placeholders in order of appearance."""
        out = []
        for t in self.templates:
            parts, order, pos = [], [], 0
            for m in _PLACEHOLDER.finditer(t):
                name = m.group(1)
                if name not in self.fields:
                    raise ValueError(f"template {t!r}: placeholder {name!r} has no field")
                parts.append(re.escape(t[pos : m.start()]))
                if name in order:
                    parts.append(f"(?P={name})")
                else:
                    parts.append(f"(?P<{name}>{self.fields[name].pattern})")
                    order.append(name)
                pos = m.end()
            parts.append(re.escape(t[pos:]))
            out.append((re.compile("".join(parts)), order))
        return out

    @cached_property
    def _numbered(self) -> dict[str, bool]:
        """Whether a kind's slots are numbered (some template fills it more than once)."""
        kinds = dict.fromkeys(f.kind for f in self.fields.values())
        return {
            k: any(sum(self.fields[p].kind == k for p in order) > 1 for _, order in self._compiled)
            for k in kinds
        }

    @cached_property
    def names(self) -> tuple[str, ...]:
        out = ["template"] if len(self.templates) > 1 else []
        for kind, numbered in self._numbered.items():
            most = max(sum(self.fields[p].kind == kind for p in o) for _, o in self._compiled)
            out += [f"{kind}#{i}" for i in range(1, most + 1)] if numbered else [kind]
        return tuple(SLOT_PREFIX + n for n in [*out, *self.roles])

    def parse_one(self, text: str, context: FeatureContext) -> Values | None:
        stripped = text.strip()
        for index, (regex, order) in enumerate(self._compiled):
            m = regex.fullmatch(stripped)
            if m is None:
                continue
            filled = {p: m.group(p) for p in order}
            roles = self.assign(filled, context) if self.assign else {}
            if roles is None:
                return None  # the template matches, but the generator never fills it so
            values: Values = dict.fromkeys(self.names)
            if len(self.templates) > 1:
                values[SLOT_PREFIX + "template"] = str(index)
            seen: dict[str, int] = {}
            for p in order:
                kind = self.fields[p].kind
                seen[kind] = seen.get(kind, 0) + 1
                slot = f"{kind}#{seen[kind]}" if self._numbered[kind] else kind
                values[SLOT_PREFIX + slot] = filled[p]
            values.update({SLOT_PREFIX + r: roles.get(r) for r in self.roles})
            return values
        return None

    def parse(self, texts: list[str], context: FeatureContext) -> list[Values | None]:
        return [self.parse_one(t, context) for t in texts]


@dataclass(frozen=True)
class PriorSlots:
    """Slots of a generator that draws its prompts from files (refusal): the values of a known
    prompt's prior row (``columns``: slot name -> value of a row), ``None`` for other text."""

    columns: Mapping[str, Callable[[dict[str, Any]], object]]
    needs_prior: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(SLOT_PREFIX + n for n in self.columns)

    def parse(self, texts: list[str], context: FeatureContext) -> list[Values | None]:
        out: list[Values | None] = []
        for text in texts:
            row = context.prior.get(text.strip())
            out.append(
                None
                if row is None
                else {SLOT_PREFIX + n: _text(f(row)) for n, f in self.columns.items()}
            )
        return out


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def slots_module_name(task: str) -> str:
    return f"{__package__}.{task}_slots"


def slots_of(task: str) -> Slots | None:
    """The task's slot declaration, or ``None`` when it declares none."""
    name = slots_module_name(task)
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name).SLOTS


def needs_prior(task: str) -> bool:
    """Whether the task's slots read the prior's rows (``FeatureContext.prior``)."""
    slots = slots_of(task)
    return bool(slots is not None and slots.needs_prior)


def token_names() -> list[Candidate]:
    offsets = [
        Candidate("tok[read]" if k == 0 else f"tok[read-{k}]", "token_offset") for k in READ_OFFSETS
    ]
    positions = [Candidate(f"tok[{p}]", "token_position") for p in POSITIONS]
    return [*offsets, *positions, Candidate("n_tokens", "length")]


def candidates(task: str, features: list[str]) -> list[Candidate]:
    """Every candidate of a run, in ``FAMILIES`` order: its features, the task's slots, the
    token and length candidates. Raises ``ValueError`` when a feature takes a generated name."""
    slots = slots_of(task)
    generated = [
        *(Candidate(n, "slot") for n in (slots.names if slots else ())),
        *token_names(),
    ]
    clash = sorted({c.name for c in generated} & set(features))
    if clash:
        raise ValueError(
            f"feature {clash[0]!r} has the name of a generated candidate; choose another name"
        )
    return [*(Candidate(f, "feature") for f in sorted(features)), *generated]


def definitions(task: str) -> dict[str, Any]:
    """What the generated candidates are, for the stage's key (the code of the slot parser is
    keyed apart, by its module's source)."""
    slots = slots_of(task)
    return {
        "offsets": list(READ_OFFSETS),
        "positions": list(POSITIONS),
        "length_bucket": LENGTH_BUCKET,
        "slots": list(slots.names) if slots else [],
    }


def token_labels(texts: list[str], tokenizer, render: Callable[[str], str] | None) -> Labels:
    """Token and length candidates of every text, as the target reads it (``render``: the
    string the target reads, default the text): ``{name: [label per text]}``. An empty text
    (the target reads no sample) has none."""
    names = [c.name for c in token_names()]
    out: Labels = {n: [None] * len(texts) for n in names}
    todo = [i for i, t in enumerate(texts) if t]
    if not todo:
        return out
    read = [render(texts[i]) if render else texts[i] for i in todo]
    ids = tokenizer(read)["input_ids"]  # as the target's reader encodes, without padding
    pieces: dict[int, str] = {}

    def piece(token: int) -> str:
        if token not in pieces:
            pieces[token] = tokenizer.decode([token])
        return pieces[token]

    for i, seq in zip(todo, ids, strict=True):
        n = len(seq)
        for k in READ_OFFSETS:
            if k < n:
                out[names[k]][i] = piece(seq[n - 1 - k])
        for p in POSITIONS:
            if p < n:
                out[names[len(READ_OFFSETS) + p]][i] = piece(seq[p])
        low = n // LENGTH_BUCKET * LENGTH_BUCKET
        out["n_tokens"][i] = f"{low}-{low + LENGTH_BUCKET - 1}"
    return out


def slot_labels(task: str, texts: list[str], context: FeatureContext) -> Labels:
    """Slot candidates of every text: ``{name: [label per text]}``."""
    slots = slots_of(task)
    if slots is None:
        return {}
    parsed = slots.parse(texts, context)
    return {n: [None if v is None else v[n] for v in parsed] for n in slots.names}
