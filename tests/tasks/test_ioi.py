from inversescope.tasks import ioi, ioi_features


def test_prior_sizes_and_vocabulary():
    assert len(ioi.TEMPLATES) >= 15
    assert len(set(ioi.NAMES)) >= 50
    assert len(set(ioi.PLACES)) == 8 and len(set(ioi.OBJECTS)) == 8


def test_prior_is_deterministic_and_disjoint():
    train, test = ioi.generate_prior(2000, 300, seed=7)
    again_train, again_test = ioi.generate_prior(2000, 300, seed=7)
    assert train == again_train and test == again_test
    assert [r["id"] for r in train] == list(range(2000))
    assert [r["id"] for r in test] == list(range(300))
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    other, _ = ioi.generate_prior(2000, 300, seed=8)
    assert [r["text"] for r in other] != [r["text"] for r in train]


def test_prompt_structure_and_metadata():
    train, _ = ioi.generate_prior(500, 10, seed=0)
    orders = {r["order"] for r in train}
    assert orders == {"ABBA", "BABA"}
    assert {r["template_id"] for r in train} == set(range(len(ioi.TEMPLATES)))
    for r in train:
        text = r["text"]
        assert text.endswith(" to")  # ends right before the indirect object
        assert text.count(r["subject"]) >= 2 and r["io"] != r["subject"]
        assert r["answer"] == " " + r["io"] and r["distractor"] == " " + r["subject"]
        first_io, first_s = text.index(r["io"]), text.index(r["subject"])
        assert (first_io < first_s) == (r["order"] == "ABBA")
        assert ioi_features.subject(text) == r["subject"]
        assert ioi_features.object(text) == r["io"]


def test_wang_example():
    text = "When Mary and John went to the store, John gave a drink to"
    assert ioi_features.subject(text) == "John"
    assert ioi_features.object(text) == "Mary"
    # surrounding whitespace, as decoded samples often have, does not matter
    assert ioi_features.object("  " + text + " ") == "Mary"


def test_features_are_none_on_malformed_text():
    malformed = [
        "",
        "hello world",
        "When Mary and John went to the store, John gave a drink to Mary",  # answer included
        "When Mary and Mary went to the store, Mary gave a drink to",  # one name only
        "When Mary and John went to the store, Alice gave a drink to",  # third name
        "When Mary and Zorg went to the store, Mary gave a drink to",  # unknown name
        "When Mary and John went to the",  # truncated
        "Then, Mary and John went to the store. John gave a drink",
    ]
    for text in malformed:
        assert ioi_features.subject(text) is None, text
        assert ioi_features.object(text) is None, text


def test_place_and_object_may_be_new_words():
    text = "When Mary and John went to the beach, Mary gave a kite to"
    assert (ioi_features.subject(text), ioi_features.object(text)) == ("Mary", "John")
