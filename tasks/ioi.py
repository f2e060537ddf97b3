"""Indirect object identification (IOI), after Wang et al. 2022, "Interpretability in the wild".

A prompt names two people in a first clause and repeats one of them (the *subject*) in a second
clause that ends right before the *indirect object*, the name that occurs once:

    "When Mary and John went to the store, John gave a drink to"   -> answer " Mary"

Every template has the slots ``{N1}``/``{N2}`` (first clause), ``{S}`` (the repeated name),
``{PLACE}`` and ``{OBJECT}``. With A the indirect object and B the subject, the *BABA* form fills
``N1=B, N2=A`` and its *ABBA* mirror ``N1=A, N2=B``; in both ``S=B``.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from inversescope.tasks.splits import unique_splits

if TYPE_CHECKING:
    from inversescope.tasks import PriorOptions

NAME = "ioi"

TEMPLATES: tuple[str, ...] = (
    "When {N1} and {N2} went to the {PLACE}, {S} gave a {OBJECT} to",
    "When {N1} and {N2} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "Then, {N1} and {N2} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} were working at the {PLACE}. {S} decided to give a {OBJECT} to",
    "Then, {N1} and {N2} were thinking about going to the {PLACE}. "
    "{S} wanted to give a {OBJECT} to",
    "After {N1} and {N2} went to the {PLACE}, {S} gave a {OBJECT} to",
    "While {N1} and {N2} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "While {N1} and {N2} were commuting to the {PLACE}, {S} gave a {OBJECT} to",
    "Friends {N1} and {N2} found a {OBJECT} at the {PLACE}. {S} gave it to",
    "The {PLACE} {N1} and {N2} went to had a {OBJECT}. {S} gave it to",
    "When {N1} and {N2} arrived at the {PLACE}, {S} passed a {OBJECT} to",
    "Afterwards, {N1} and {N2} went to the {PLACE}. {S} handed a {OBJECT} to",
    "Once {N1} and {N2} reached the {PLACE}, {S} brought a {OBJECT} to",
    "Later, {N1} and {N2} met at the {PLACE}, and {S} offered a {OBJECT} to",
    "Yesterday {N1} and {N2} cleaned the {PLACE}. {S} threw a {OBJECT} to",
)

NAMES: tuple[str, ...] = (
    "Mary",
    "John",
    "Alice",
    "Bob",
    "Tom",
    "James",
    "Sarah",
    "Michael",
    "David",
    "Emma",
    "Laura",
    "Daniel",
    "Anna",
    "Paul",
    "Kate",
    "Mark",
    "Lisa",
    "Peter",
    "Rachel",
    "Steven",
    "Jessica",
    "Brian",
    "Emily",
    "Kevin",
    "Amy",
    "Jason",
    "Linda",
    "Eric",
    "Karen",
    "Ryan",
    "Helen",
    "Adam",
    "Grace",
    "Justin",
    "Nancy",
    "Scott",
    "Julia",
    "Frank",
    "Diana",
    "George",
    "Sophie",
    "Henry",
    "Claire",
    "Jack",
    "Lucy",
    "Oliver",
    "Rose",
    "Sam",
    "Victoria",
    "Max",
    "Ben",
    "Carl",
    "Megan",
    "Nick",
    "Olivia",
    "Tim",
)

PLACES: tuple[str, ...] = (
    "store",
    "garden",
    "restaurant",
    "school",
    "hospital",
    "office",
    "house",
    "station",
)

OBJECTS: tuple[str, ...] = (
    "drink",
    "ring",
    "basket",
    "necklace",
    "snack",
    "bone",
    "computer",
    "bag",
)


def make_prompt(rng: random.Random) -> dict[str, object]:
    """One IOI prompt with its metadata (template, order, names, place, object, answer)."""
    template_id = rng.randrange(len(TEMPLATES))
    order = rng.choice(("ABBA", "BABA"))
    io, subject = rng.sample(NAMES, 2)
    place = rng.choice(PLACES)
    obj = rng.choice(OBJECTS)
    n1, n2 = (io, subject) if order == "ABBA" else (subject, io)
    text = TEMPLATES[template_id].format(N1=n1, N2=n2, S=subject, PLACE=place, OBJECT=obj)
    return {
        "text": text,
        "template_id": template_id,
        "order": order,
        "io": io,
        "subject": subject,
        "place": place,
        "object": obj,
        "answer": " " + io,
        "distractor": " " + subject,
    }


def generate_prior(
    n_train: int, n_test: int, seed: int, options: PriorOptions | None = None
) -> tuple[list[dict], list[dict]]:
    """Disjoint train and test prompts (no text in both), deterministic in ``seed``.

    Returns two lists of row dicts; ``id`` is the row number within its split.
    """
    check_files([], n_train + n_test)
    return unique_splits(make_prompt, n_train, n_test, seed)


def check_files(paths: list, needed: int | None = None) -> None:
    """IOI reads no data files, and draws at most a quarter of its distinct prompts (beyond
    that, drawing them without repeats slows to a crawl)."""
    if paths:
        raise ValueError(f"task ioi takes no prior.files, got {[str(p) for p in paths]}")
    capacity = len(TEMPLATES) * 2 * len(NAMES) * (len(NAMES) - 1) * len(PLACES) * len(OBJECTS)
    if needed is not None and needed > capacity // 4:
        raise ValueError(
            f"prior.n_train + prior.n_test = {needed} is too many distinct ioi prompts; "
            f"at most {capacity // 4} are accepted"
        )
