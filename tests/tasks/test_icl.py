from inversescope.tasks import icl, icl_features


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
    agree = sum(icl_features.task_of(r["text"]) == r["task"] for r in train)
    assert agree >= 0.98 * len(train)  # a few demos fit two directions: None
    assert all(icl_features.task_of(r["text"]) in (r["task"], None) for r in train)
    assert all(icl_features.input(r["text"]) == r["input"] for r in train)
    assert all(r["text"].count("Input:") == icl.SHOTS + 1 for r in train)


def test_example_and_malformed():
    text = "Input: dog, Output: chien\nInput: cat, Output: chat\nInput: water, Output:"
    assert icl_features.task_of(text) == "english->french"
    assert icl_features.input(text) == "water"
    back = "Input: perro, Output: dog\nInput: gato, Output: cat\nInput: agua, Output:"
    assert icl_features.task_of(back) == "spanish->english"
    mixed = "Input: dog, Output: chien\nInput: cat, Output: gatto\nInput: water, Output:"
    assert icl_features.task_of(mixed) is None and icl_features.input(mixed) == "water"
    for bad in [
        "",
        "Input: dog, Output:",
        "Input: dog, Output: chien\nInput: water",
        "hello world",
        "Input: dog, Output: chien\nInput: water, Output: eau",
    ]:
        assert icl_features.task_of(bad) is None and icl_features.input(bad) is None, bad


def write_words(path, rows):
    path.write_text(
        "english,french,italian,spanish\n" + "".join(",".join(r) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def test_user_word_list(tmp_path):
    from inversescope.tasks import PriorOptions
    from inversescope.tasks.features import FeatureContext

    rows = [(f"e{i}", f"f{i}", f"i{i}", f"s{i}") for i in range(12)]
    path = write_words(tmp_path / "words.csv", rows)
    icl.check_files([path])
    train, test = icl.generate_prior(50, 10, seed=0, options=PriorOptions(files=(path,)))
    words = {w for r in rows for w in r}
    for r in train + test:
        assert r["input"] in words and r["answer"].strip() in words
    ctx = FeatureContext(files=(path,))
    got = icl_features.task_rule([r["text"] for r in train], ctx)
    assert got == [r["task"] for r in train]  # the user's lexicon decides the direction
    # the shipped list: no direction fits
    assert icl_features.task_rule([train[0]["text"]], FeatureContext()) == [None]


def test_bad_user_word_lists(tmp_path):
    import pytest

    short = write_words(tmp_path / "short.csv", [("a", "b", "c", "d")])
    with pytest.raises(ValueError, match="1 rows, a prompt needs 5"):
        icl.check_files([short])
    spaced = write_words(
        tmp_path / "spaced.csv", [(f"e{i}", f"f {i}", f"i{i}", f"s{i}") for i in range(6)]
    )
    with pytest.raises(ValueError, match="french 'f 0' is not a single word"):
        icl.check_files([spaced])
    missing = tmp_path / "missing.csv"
    missing.write_text("english,french\na,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing columns \\['italian', 'spanish'\\]"):
        icl.check_files([missing])
    with pytest.raises(ValueError, match="at most one word list"):
        icl.check_files([short, spaced])
