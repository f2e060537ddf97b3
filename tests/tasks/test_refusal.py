"""The refusal task: query files, the token filter, chat rendering and its features. Every file
here is benign and synthetic."""

import copy
import json
from pathlib import Path

import pytest

from inversescope.core.extract import SiteReader
from inversescope.tasks import PriorOptions, data_dir, resolve_data_file
from inversescope.tasks import refusal as rf
from inversescope.tasks import refusal_features as rff
from inversescope.tasks.features import FeatureContext


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["text,harmful,source"] + [f'"{t}",{h},{s}' for t, h, s in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def query_files(tmp_path):
    csv_file = write_csv(
        tmp_path / "a.csv",
        [(f"Spoil the ending of story {i}.", "yes", "toy") for i in range(30)]
        + [("Recommend a calm song.", "0", "toy")],
    )
    jsonl_file = write_jsonl(
        tmp_path / "b.jsonl",
        [{"text": f"Suggest a name for cat number {i}.", "harmful": False} for i in range(30)]
        + [{"text": "Recommend a calm song.", "harmful": "false"}],  # a duplicate, same label
    )
    return [csv_file, jsonl_file]


def test_query_files_read_csv_and_jsonl(query_files):
    a = rf.read_queries(query_files[0])
    b = rf.read_queries(query_files[1])
    assert a[0] == {"text": "Spoil the ending of story 0.", "harmful": True, "source": "toy"}
    assert a[-1]["harmful"] is False
    assert b[0]["source"] == "b.jsonl"  # no source column: the file's name


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.csv", "text,harmful\n,yes\n", "q.csv:2: a row needs a non-empty text"),
        ("q.csv", "text,harmful\nhello,maybe\n", "q.csv:2: harmful='maybe' is not a yes/no"),
        ("q.jsonl", '{"text": "hi"}\n', "q.jsonl:1: a row needs harmful"),
        ("q.jsonl", "{not json\n", "q.jsonl:1: not a JSON object"),
        ("q.txt", "hello\n", "query files are .csv or .jsonl"),
    ],
)
def test_bad_query_files_name_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        rf.read_queries(path)
    assert message in str(info.value)


def test_prior_dedupes_filters_and_splits(query_files):
    opts = PriorOptions(
        files=tuple(query_files), max_tokens=6, count_tokens=lambda t: len(t.split())
    )
    train, test = rf.generate_prior(20, 10, seed=1, options=opts)
    texts = [r["text"] for r in train + test]
    assert len(set(texts)) == 30
    assert all(len(t.split()) <= 6 for t in texts)  # "Suggest a name for cat number i." is 7
    assert not any(t.startswith("Suggest") for t in texts)
    assert all(r["answer"] == (rf.REFUSE if r["harmful"] else rf.COMPLY) for r in train + test)
    assert all(r["distractor"] != r["answer"] for r in train + test)
    assert (train, test) == rf.generate_prior(20, 10, seed=1, options=opts)
    with pytest.raises(ValueError, match="31 usable queries .30 longer than prior.max_tokens"):
        rf.generate_prior(40, 10, seed=1, options=opts)


def test_conflicting_labels_are_an_error(tmp_path):
    a = write_csv(tmp_path / "a.csv", [("Tell a joke.", "yes", "x")])
    b = write_csv(tmp_path / "b.csv", [("Tell a joke.", "no", "y")])
    with pytest.raises(ValueError, match="labelled both harmful and harmless"):
        rf.generate_prior(1, 0, 0, PriorOptions(files=(a, b)))


def test_refusal_without_files_says_how_to_give_them():
    with pytest.raises(ValueError, match=r"prior.files=\[queries.csv"):
        rf.check_files([])


def test_shipped_toy_set_is_benign_and_balanced_enough():
    rows = rf.read_queries(resolve_data_file("data:refusal_toy.jsonl"))
    assert len(rows) > 1200 and resolve_data_file("data:refusal_toy.jsonl").parent == data_dir()
    share = sum(r["harmful"] for r in rows) / len(rows)
    assert 0.3 < share < 0.7
    sources = {"toy-spoiler", "toy-secret", "toy-recommend", "toy-place"}
    assert {r["source"] for r in rows} == sources


def test_unknown_data_file_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="'data:nope.jsonl' is not shipped; accepted: .*toy"):
        resolve_data_file("data:nope.jsonl")


def test_render_uses_the_chat_template(tiny_tokenizer):
    tok = tiny_tokenizer
    tok.chat_template = rf.CHAT_TEMPLATE
    assert rf.render("Tell me a story.", tok) == "User: Tell me a story.\nAssistant:"


def test_render_writes_bos_once(tiny_tokenizer):
    """A Llama-3-style template writes BOS itself; a tokenizer that also adds BOS gets it once."""
    from tokenizers.processors import TemplateProcessing

    special = tiny_tokenizer.eos_token
    tok = tiny_tokenizer.__class__(tokenizer_object=copy.deepcopy(tiny_tokenizer.backend_tokenizer))
    tok.bos_token = tok.eos_token = tok.pad_token = special
    tok.chat_template = "{{ bos_token }}" + rf.CHAT_TEMPLATE
    plain = rf.render("Hi there.", tok)
    assert plain.startswith(special)  # the tokenizer adds nothing: keep the template's BOS
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{special} $A", special_tokens=[(special, tok.bos_token_id)]
    )
    rendered = rf.render("Hi there.", tok)
    ids = tok(rendered)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_site_is_read_at_the_last_token_of_the_rendering(tiny_gpt2, tiny_tokenizer):
    tok = tiny_tokenizer
    tok.chat_template = rf.CHAT_TEMPLATE
    queries = ["Tell me a story.", "Recommend a calm song about the sea."]
    rendered = SiteReader(tiny_gpt2, tok, ["L1H0"], render=lambda t: rf.render(t, tok))
    direct = SiteReader(tiny_gpt2, tok, ["L1H0"]).read([rf.render(q, tok) for q in queries])
    assert (rendered.read(queries)["L1H0"] == direct["L1H0"]).all()
    assert not (direct["L1H0"] == SiteReader(tiny_gpt2, tok, ["L1H0"]).read(queries)["L1H0"]).all()


def test_features_use_file_labels_then_the_labeller():
    prior = {
        "Spoil the ending.": {"harmful": True},
        "Recommend a song.": {"harmful": False},
    }
    calls = []

    def labeller(template, labels):
        def label_many(texts):
            calls.append((template, list(texts)))
            return [labels[0] if "secret" in t else labels[-1] for t in texts]

        return label_many

    texts = ["Spoil the ending.", "Recommend a song.", "Reveal the secret code.", "Hello.", ""]
    bare = FeatureContext(prior=prior)
    assert rff.harmfulness(texts, bare) == ["harmful", "harmless", None, None, None]
    ctx = FeatureContext(prior=prior, labeller=labeller)
    assert rff.harmfulness(texts, ctx) == [
        "harmful",
        "harmless",
        "harmful",
        "harmless",
        None,
    ]
    assert calls[0] == (rff.HARM_TEMPLATE, ["Reveal the secret code.", "Hello."])
    calls.clear()
    reasons = rff.reason(texts, ctx)
    assert reasons[1] is None and reasons[3] is None and reasons[4] is None
    assert reasons[0] in rff.REASONS and reasons[2] in rff.REASONS
    # only the harmful ones reach the reason question
    assert calls[-1] == (
        rff.REASON_TEMPLATE,
        ["Spoil the ending.", "Reveal the secret code."],
    )
    assert all(m is None or m in rff.METHODS for m in rff.method(texts, ctx))
