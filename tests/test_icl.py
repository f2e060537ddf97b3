from inversescope.tasks import icl


def test_word_list():
    rows = icl.load_words()
    assert len(rows) >= 200
    for lang in icl.LANGUAGES:
        words = [r[lang] for r in rows]
        assert len(set(words)) == len(words), lang  # a word maps back to one concept
        assert all(w and " " not in w and "," not in w for w in words), lang


def test_prior_is_deterministic_disjoint_and_balanced():
    train, test = icl.generate_prior(1200, 200, seed=3)
    assert (train, test) == icl.generate_prior(1200, 200, seed=3)
    assert not {r["text"] for r in train} & {r["text"] for r in test}
    assert {r["task"] for r in train} == {icl.direction_name(d) for d in icl.DIRECTIONS}
    assert [r["id"] for r in test] == list(range(200))


def test_features_recover_the_prompt():
    train, _ = icl.generate_prior(600, 10, seed=0)
    agree = sum(icl.task(r["text"]) == r["task"] for r in train)
    assert agree >= 0.98 * len(train)  # a few demos fit two directions: None
    assert all(icl.task(r["text"]) in (r["task"], None) for r in train)
    assert all(icl.input(r["text"]) == r["input"] for r in train)
    assert all(r["text"].count("Input:") == icl.SHOTS + 1 for r in train)


def test_example_and_malformed():
    text = "Input: dog, Output: chien\nInput: cat, Output: chat\nInput: water, Output:"
    assert icl.task(text) == "english->french"
    assert icl.input(text) == "water"
    back = "Input: perro, Output: dog\nInput: gato, Output: cat\nInput: agua, Output:"
    assert icl.task(back) == "spanish->english"
    mixed = "Input: dog, Output: chien\nInput: cat, Output: gatto\nInput: water, Output:"
    assert icl.task(mixed) is None and icl.input(mixed) == "water"
    for bad in [
        "",
        "Input: dog, Output:",
        "Input: dog, Output: chien\nInput: water",
        "hello world",
        "Input: dog, Output: chien\nInput: water, Output: eau",
    ]:
        assert icl.task(bad) is None and icl.input(bad) is None, bad
