"""The paper's task definitions (appendix C): ioi item and place, FCR over references restricted
by a feature's value (refusal: harmful only), icl's labeller-backed task beside the rule-based
one."""

import polars as pl
import pytest

from inversescope.config import load_run_config
from inversescope.core.config import FcrConfig
from inversescope.core.labeller import LikelihoodLabeller
from inversescope.core.tokenizer import train_bpe_tokenizer
from inversescope.scoring import compute_results
from inversescope.tasks import icl, icl_features, ioi, ioi_features
from inversescope.tasks.features import FeatureContext, resolve_features


def test_ioi_item_and_place_of_every_template():
    train, _ = ioi.generate_prior(300, 10, seed=3)
    for r in train:
        parsed = ioi_features.parse(r["text"])
        assert parsed is not None
        assert ioi_features.item(r["text"]) in ioi.OBJECTS
        assert ioi_features.place(r["text"]) in ioi.PLACES
    text = "When Mary and John went to the store, John gave a drink to"
    assert (ioi_features.item(text), ioi_features.place(text)) == ("drink", "store")
    text = "The garden Anna and Paul went to had a ring. Anna gave it to"
    assert (ioi_features.item(text), ioi_features.place(text)) == ("ring", "garden")
    for bad in ("When Mary and Mary went to the store, Mary gave a drink to", "a drink", ""):
        assert ioi_features.item(bad) is None and ioi_features.place(bad) is None
    assert {"subject", "object", "item", "place"} <= set(resolve_features("ioi", {}))


def fcr_tables():
    """4 references (0, 1 harmful; 2, 3 harmless), 2 sites x 3 samples each. Samples of harmful
    references are labelled harmless (FCR 0 there), those of harmless ones harmless (FCR 1)."""
    ref = pl.DataFrame(
        {
            "id": [0, 1, 2, 3],
            "text": ["a", "b", "c", "d"],
            "harmfulness": ["harmful", "harmful", "harmless", "harmless"],
        }
    )
    rows = [(s, e, i) for s in ("L0H0", "L1.attn") for e in range(4) for i in range(3)]
    samples = pl.DataFrame(
        {
            "site": [r[0] for r in rows],
            "example_id": [r[1] for r in rows],
            "sample_idx": [r[2] for r in rows],
            "text": ["x"] * len(rows),
            "distance": [0.05 if r[2] else 0.5 for r in rows],
            "accepted": [r[2] != 0 for r in rows],
        }
    )
    labels = samples.select("site", "example_id", "sample_idx").with_columns(
        harmfulness=pl.lit("harmless")
    )
    return samples, labels, ref


def test_fcr_over_harmful_references_only():
    samples, labels, ref = fcr_tables()
    run = load_run_config("refusal-tiny", ["fcr.n_bootstrap=50"])
    assert run.fcr.references == {"harmfulness": "harmful"}
    everyone = run.model_copy(update={"fcr": run.fcr.model_copy(update={"references": {}})})
    got = compute_results(samples, labels, ref, ["harmfulness"], run, "k")
    full = compute_results(samples, labels, ref, ["harmfulness"], everyone, "k")
    assert got["fcr"].to_list() == [0.0, 0.0] and full["fcr"].to_list() == [0.5, 0.5]
    assert got["n_examples"].to_list() == [2, 2] and full["n_examples"].to_list() == [4, 4]
    # refusal rates still cover every reference
    assert got["refusal_rate"].to_list() == full["refusal_rate"].to_list()
    assert got["refusal_rate"].to_list() == pytest.approx([1 / 3, 1 / 3])
    # chance: harmful references against prior draws (every reference), half of them harmful
    assert got["chance"].to_list() == [0.5, 0.5]
    # the same as computing on the harmful references' tables alone
    keep = [0, 1]
    alone = compute_results(
        samples.filter(pl.col("example_id").is_in(keep)),
        labels.filter(pl.col("example_id").is_in(keep)),
        ref.filter(pl.col("id").is_in(keep)),
        ["harmfulness"],
        everyone,
        "k",
    )
    assert alone["fcr"].to_list() == got["fcr"].to_list()
    assert alone["n_samples"].to_list() == got["n_samples"].to_list()


def test_reference_filter_names_bad_values():
    samples, labels, ref = fcr_tables()
    run = load_run_config("refusal-tiny", ["fcr.references={reason: violence}"])
    with pytest.raises(ValueError, match=r"\['reason'\].*harmfulness"):
        compute_results(samples, labels, ref, ["harmfulness"], run, "k")
    with pytest.raises(ValueError, match="fcr.references"):
        FcrConfig(references={"harmfulness": ""})


@pytest.fixture(scope="module")
def labeller_model():
    from inversescope.core.config import TinyModelConfig
    from inversescope.core.models import build_tiny_gpt2

    train, _ = icl.generate_prior(200, 10, seed=0)
    tok = train_bpe_tokenizer([r["text"] for r in train] + icl_features.TASK_LABELS, 400)
    arch = TinyModelConfig(n_layer=1, n_head=2, d_model=16, n_positions=256, vocab_size=400)
    return build_tiny_gpt2(arch, len(tok), tok.eos_token_id).eval(), tok, train


def test_icl_task_comes_from_the_labeller(labeller_model):
    model, tok, train = labeller_model

    def labeller(template, labels):
        return LikelihoodLabeller(model, tok, template, labels, "tiny", batch_size=48).label_many

    assert len(icl_features.TASK_LABELS) == 12
    assert "English-to-French translation" in icl_features.TASK_LABELS
    texts = [r["text"] for r in train[:6]]
    # imperfect demonstrations still get a task; text without any demonstration does not
    imperfect = texts[0].replace("Output: ", "Output: zz", 1)
    got = icl_features.task([*texts, imperfect, "hello"], FeatureContext(labeller=labeller))
    assert all(g in icl_features.TASK_LABELS for g in got[:-1]) and got[-1] is None
    # the rule-based direction keeps its own name
    assert icl_features.task_rule(texts, FeatureContext()) == [r["task"] for r in train[:6]]
    with_lab = resolve_features("icl", {}, has_labeller=True)
    assert {"task", "task_rule", "input"} == set(with_lab)
    assert with_lab["task"].needs_labeller and not with_lab["task_rule"].needs_labeller
    assert set(resolve_features("icl", {})) == {"task_rule", "input"}
