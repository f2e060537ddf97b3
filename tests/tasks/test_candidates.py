"""Candidate features: each task's slots parsed back from its own prior agree with what the
generator filled; tokens at offsets and positions agree with the target's own encoding; a new
task gets slot candidates by declaring them."""

import pytest

from inversescope.tasks import icl, ioi, refusal, resolve_data_file, task_renderer
from inversescope.tasks.candidates import (
    Field,
    PriorSlots,
    TemplateSlots,
    candidates,
    slot_labels,
    token_labels,
)
from inversescope.tasks.features import FeatureContext


def test_ioi_slots_recover_what_the_generator_filled():
    _, test = ioi.generate_prior(10, 400, seed=2)
    slots = slot_labels("ioi", [r["text"] for r in test], FeatureContext())
    for i, r in enumerate(test):
        n1, n2 = (r["io"], r["subject"]) if r["order"] == "ABBA" else (r["subject"], r["io"])
        assert slots["slot:template"][i] == str(r["template_id"])
        assert slots["slot:order"][i] == r["order"]
        assert (slots["slot:name.io"][i], slots["slot:name.subject"][i]) == (r["io"], r["subject"])
        by_order = [slots[f"slot:name#{k}"][i] for k in (1, 2, 3)]
        assert by_order == [n1, n2, r["subject"]]
        assert (slots["slot:place"][i], slots["slot:item"][i]) == (r["place"], r["object"])


def test_ioi_text_that_does_not_parse_has_no_slots():
    texts = [
        "",
        "When Mary and John went to the store",  # cut short
        "When Mary and Mary went to the store, Mary gave a drink to",  # one name twice
        "When Mary and John went to the store, Alice gave a drink to",  # a third name
        "When Mary and Zork went to the store, Mary gave a drink to",  # not a name of the prior
    ]
    slots = slot_labels("ioi", texts, FeatureContext())
    assert all(v == [None] * len(texts) for v in slots.values())


def test_icl_slots_recover_the_demonstrations_and_the_input():
    _, test = icl.generate_prior(10, 300, seed=1)
    slots = slot_labels("icl", [r["text"] for r in test], FeatureContext())
    agree = 0
    for i, r in enumerate(test):
        src, tgt = r["task"].split("->")
        assert slots["slot:input"][i] == r["input"]
        assert src in slots["slot:lang.input"][i].split("|")
        for k in range(1, icl.SHOTS + 1):
            assert src in slots[f"slot:lang.src#{k}"][i].split("|")
            assert tgt in slots[f"slot:lang.tgt#{k}"][i].split("|")
        assert slots["slot:direction"][i] in (r["task"], None)  # None: two directions fit
        agree += slots["slot:direction"][i] == r["task"]
    assert agree >= 0.95 * len(test)
    demo = "Input: dog, Output: chien\nInput: cat, Output: chat\nInput: water, Output:"
    assert slot_labels("icl", [demo], FeatureContext())["slot:input"] == [None]  # 2 shots, not 4


def test_refusal_slots_are_the_prior_rows_of_known_queries():
    rows = refusal.read_queries(resolve_data_file("data:refusal_toy.jsonl"))
    context = FeatureContext(prior={r["text"]: r for r in rows})
    slots = slot_labels("refusal", [rows[0]["text"], rows[1]["text"], "not a query"], context)
    harm = [refusal.HARMFUL if r["harmful"] else refusal.HARMLESS for r in rows[:2]]
    assert slots["slot:harmfulness"] == [*harm, None]
    assert slots["slot:category"] == [rows[0]["source"], rows[1]["source"], None]


def test_tokens_at_offsets_and_positions_are_the_targets_own(tiny_tokenizer):
    prefix = tiny_tokenizer.eos_token
    render = task_renderer("ioi", tiny_tokenizer, prefix)
    texts = ["When Mary and John went to the store, John gave a drink to", "Then", ""]
    labels = token_labels(texts, tiny_tokenizer, render)
    ids = tiny_tokenizer(prefix + texts[0])["input_ids"]
    pieces = [tiny_tokenizer.decode([i]) for i in ids]
    assert labels["tok[read]"][0] == pieces[-1] == " to"
    assert [labels[f"tok[read-{k}]"][0] for k in range(1, 9)] == pieces[-2:-10:-1]
    assert [labels[f"tok[{p}]"][0] for p in range(8)] == pieces[:8]
    assert labels["tok[0]"][0] == prefix  # the target reads <eos> first
    low = len(ids) // 4 * 4
    assert labels["n_tokens"][0] == f"{low}-{low + 3}"
    short = len(tiny_tokenizer(prefix + "Then")["input_ids"])
    assert labels[f"tok[{short - 1}]"][1] is not None and labels[f"tok[{short}]"][1] is None
    assert all(v[2] is None for v in labels.values())  # an empty sample: nothing is read


def test_candidate_lists():
    ioi_names = [c.name for c in candidates("ioi", ["item", "object", "place", "subject"])]
    assert len(ioi_names) == len(set(ioi_names)) == 31
    assert ioi_names[:4] == ["item", "object", "place", "subject"]  # features first
    assert {
        "slot:template",
        "slot:name.io",
        "slot:order",
        "tok[read-8]",
        "tok[7]",
        "n_tokens",
    } <= set(ioi_names)
    assert len(candidates("icl", ["input", "task_rule"])) == 2 + 21 + 18
    assert len(candidates("refusal", ["harmfulness"])) == 1 + 2 + 18
    with pytest.raises(ValueError, match="feature 'n_tokens' has the name of a generated"):
        candidates("ioi", ["n_tokens"])


def test_a_new_task_declares_its_slots():
    slots = TemplateSlots(
        templates=("{A} likes {B}, and {A} says so.", "{B} is liked."),
        fields={"A": Field("person", r"[A-Z][a-z]+"), "B": Field("thing", r"[a-z]+")},
        roles=("fan",),
        assign=lambda filled, context: {"fan": filled.get("A")},
    )
    assert slots.names == ("slot:template", "slot:person", "slot:thing", "slot:fan")
    got = slots.parse(["Ann likes tea, and Ann says so.", "Ann likes tea, and Bob says so."], None)
    assert got[0] == {
        "slot:template": "0",
        "slot:person": "Ann",
        "slot:thing": "tea",
        "slot:fan": "Ann",
    }
    assert got[1] is None  # a repeated placeholder holds one value
    assert slots.parse(["tea is liked."], None)[0]["slot:person"] is None
    rows = PriorSlots(columns={"kind": lambda row: row["kind"]})
    assert rows.parse(["x", "y"], FeatureContext(prior={"x": {"kind": 3}})) == [
        {"slot:kind": "3"},
        None,
    ]
