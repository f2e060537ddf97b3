"""Scoring candidates against chance: the FCR of core.fcr to the bit, the permutation null
computed a second way (every permutation), calibration under the null, BH by hand, ranking,
aliases and the shuffled control."""

import itertools
import math

import numpy as np
import pytest

from inversescope.core.fcr import chance_level, estimate_fcr, kernel_weights
from inversescope.core.hypotheses import (
    ALIAS,
    CONSTANT,
    TESTED,
    UNDEFINED,
    HypothesesConfig,
    Hypothesis,
    SiteSamples,
    alias_representatives,
    benjamini_hochberg,
    encode_labels,
    permutation_p_value,
    rank_sites,
    score_pair,
    score_run,
    shuffled_control,
)

CONFIG = HypothesesConfig()


def _labels(codes):
    return np.array([None if c < 0 else int(c) for c in codes], dtype=object)


def _pair(example, weight, sample, reference, pool, candidate="f", config=CONFIG):
    return score_pair(
        "L0H0", candidate, example, weight, sample, reference, list(pool), config, 500, 0.95, 3
    )


def _random_site(rng, n_examples=12, per=6, n_labels=4, signal=0.0):
    """Per-sample arrays of one site: a reference label per example (some undefined), samples
    that copy it with probability ``signal``, some undefined, some far (hard kernel)."""
    example = np.repeat(np.arange(n_examples), per)
    ref = rng.integers(-1, n_labels, n_examples)  # -1: undefined reference
    copy = rng.random(len(example)) < signal
    sample = np.where(copy, ref[example], rng.integers(-1, n_labels, len(example)))
    distance = rng.random(len(example)) * 0.3
    return example, distance, sample, ref[example]


def test_fcr_and_interval_equal_estimate_fcr_to_the_bit():
    rng = np.random.default_rng(1)
    for kernel in ("hard", "gaussian"):
        for _ in range(20):
            example, distance, sample, reference = _random_site(rng, signal=0.5)
            w = kernel_weights(distance, 0.1, kernel)
            pool = rng.integers(-1, 4, 50)
            h = _pair(example, w, sample, reference, [None if p < 0 else int(p) for p in pool])
            est = estimate_fcr(example, _labels(sample), _labels(reference), w, 500, 0.95, 3)
            if est.n_examples == 0:
                assert h.status == UNDEFINED
                continue
            assert (h.fcr, h.ci_low, h.ci_high) == (est.fcr, est.ci_low, est.ci_high)
            assert (h.n_examples, h.n_samples) == (est.n_examples, est.n_samples)


def test_chance_is_chance_level_over_the_references_fcr_averages():
    # example 2 keeps no weight (hard kernel): it is left out of FCR and of chance
    example = np.array([0, 0, 1, 1, 2, 2])
    reference = np.array([0, 0, 1, 1, 2, 2])
    sample = np.array([0, 1, 1, 1, 2, 2])
    w = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    pool = [0, 0, 0, 1, 2, None]
    h = _pair(example, w, sample, reference, pool)
    assert h.fcr == pytest.approx(0.75) and h.n_examples == 2
    assert h.chance == chance_level([0, 1], pool) == pytest.approx((0.6 + 0.2) / 2)
    assert h.lift == pytest.approx(0.75 - 0.4)
    assert h.normalised_lift == pytest.approx(0.35 / 0.6)


def test_null_fcr_is_the_mean_over_every_permutation():
    rng = np.random.default_rng(2)
    example, distance, sample, reference = _random_site(rng, n_examples=6, signal=0.6)
    reference = np.repeat(np.array([0, 1, 1, 2, 0, 3]), 6)  # every reference defined
    w = kernel_weights(distance, 0.1, "gaussian")
    h = _pair(example, w, sample, reference, [0, 1, 2, 3])
    own = reference[::6]
    fcrs = []
    for perm in itertools.permutations(range(6)):
        permuted = own[list(perm)][example]
        fcrs.append(estimate_fcr(example, _labels(sample), _labels(permuted), w, 10).fcr)
    assert h.null_fcr == pytest.approx(np.mean(fcrs), abs=1e-12)
    # the exact permutation p-value, against the Monte Carlo one without early stopping
    exact = np.mean(np.array(fcrs) >= h.fcr - 1e-12)
    many = HypothesesConfig(permutations=20_000, stop_after=20_000)
    mc = _pair(example, w, sample, reference, [0, 1, 2, 3], config=many)
    assert mc.p_value == pytest.approx(exact, abs=0.01)


def test_p_values_are_calibrated_under_the_null():
    rng = np.random.default_rng(3)
    p = []
    for i in range(300):
        example, distance, sample, reference = _random_site(rng, n_examples=10, n_labels=3)
        w = kernel_weights(distance, 0.2, "gaussian")
        h = _pair(example, w, sample, reference, [0, 1, 2], candidate=f"f{i}")
        if h.status == TESTED:
            p.append(h.p_value)
    p = np.array(p)
    assert len(p) > 250
    for a in (0.05, 0.1, 0.25):
        assert np.mean(p <= a) <= a + 0.05  # valid: never much below uniform


def test_sequential_permutations_stop_early_on_the_null_and_run_to_the_end_on_a_strong_pair():
    rng = np.random.default_rng(4)
    share = rng.random((20, 5))
    column = rng.integers(0, 5, 20)
    p, n = permutation_p_value(share, column, np.random.default_rng(0), 10_000, 10)
    assert n < 10_000 and p == pytest.approx(10 / n)
    strong = np.eye(5)[column] * 0.9 + 0.02  # each example's own label dominates its samples
    p, n = permutation_p_value(strong, column, np.random.default_rng(0), 10_000, 10)
    assert (p, n) == (1 / 10_001, 10_000)
    # one label among the contributing references: every permutation is the identity's FCR
    assert permutation_p_value(share, np.zeros(20, dtype=int), rng, 10_000, 10) == (1.0, 0)


def test_constant_and_undefined_candidates_are_not_tested():
    example = np.repeat(np.arange(4), 3)
    same = np.zeros(12, dtype=int)
    h = _pair(example, np.ones(12), same, same, [0, 0, 0])
    assert h.status == CONSTANT and h.chance == 1.0 and math.isnan(h.p_value)
    none = np.full(12, -1)
    h = _pair(example, np.ones(12), none, none, [0, 1])
    assert h.status == UNDEFINED and h.n_examples == 0 and math.isnan(h.fcr)


def test_benjamini_hochberg_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.5, np.nan])
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 0.04, 0.06, 0.0533, 0.5 -> running minimum from the top
    q = benjamini_hochberg(p)
    assert q[:4] == pytest.approx([0.04, 4 * 0.04 / 3, 4 * 0.04 / 3, 0.5])
    assert np.isnan(q[4])
    assert np.isnan(benjamini_hochberg(np.array([np.nan]))).all()


def test_encode_labels_and_aliases():
    codes = encode_labels(
        [
            ["a", "b", "a", None],
            ["x", "y", "x", None],  # the same classes under other names
            ["x", "y", "x", "z"],  # defined where the first is not: another candidate
            ["b", "b", "a", None],
        ]
    )
    assert codes[0].tolist() == [0, 1, 0, -1]
    assert alias_representatives(codes).tolist() == [0, 0, 2, 3]


def _strong_run(seed=5, n_sites=3, n_examples=20, per=8):
    """Inputs 0..n_examples-1 are references; samples are further inputs. Candidate 0 is what
    the sites encode (samples copy their reference's label), 1 is its alias, 2 is noise, 3 is
    constant."""
    rng = np.random.default_rng(seed)
    ref_label = rng.integers(0, 5, n_examples)
    n_samples = n_examples * per
    example = np.repeat(np.arange(n_examples), per)
    sample_label = np.where(rng.random(n_samples) < 0.8, ref_label[example], rng.integers(0, 5))
    encoded = np.concatenate([ref_label, sample_label])
    codes = np.stack(
        [
            encoded,
            (encoded + 1) % 5,
            rng.integers(0, 5, len(encoded)),
            np.zeros(len(encoded), dtype=int),
        ]
    )
    sites = {
        f"L{i}H0": SiteSamples(
            example, np.ones(n_samples), n_examples + np.arange(n_samples), example
        )
        for i in range(n_sites)
    }
    return sites, codes, ["encoded", "renamed", "noise", "constant"], np.arange(n_examples)


def test_score_run_ranks_what_the_sites_encode_and_the_shuffled_control_passes_nothing():
    sites, codes, names, pool = _strong_run()
    found = score_run(sites, codes, names, pool, CONFIG, 200)
    by = {(h.site, h.candidate): h for h in found}
    for site in sites:
        assert by[(site, "encoded")].rank == 1 and by[(site, "encoded")].q_value < 0.05
        alias = by[(site, "renamed")]
        assert alias.status == ALIAS and alias.alias_of == "encoded" and alias.rank is None
        assert (alias.fcr, alias.q_value) == (
            by[(site, "encoded")].fcr,
            by[(site, "encoded")].q_value,
        )
        assert by[(site, "constant")].status == CONSTANT and by[(site, "constant")].rank is None
    control = score_run(shuffled_control(sites, 0), codes, names, pool, CONFIG, 200)
    assert [h for h in control if h.rank is not None] == []
    assert min(h.q_value for h in control if h.status == TESTED) >= 0.05


def test_a_pair_p_value_depends_on_nothing_else():
    sites, codes, names, pool = _strong_run()
    alone = score_run({"L0H0": sites["L0H0"]}, codes[2:3], ["noise"], pool, CONFIG, 200)
    every = score_run(sites, codes, names, pool, CONFIG, 200)
    noise = next(h for h in every if (h.site, h.candidate) == ("L0H0", "noise"))
    assert alone[0].p_value == noise.p_value


def test_rank_needs_fcr_above_chance():
    def hyp(candidate, lift):
        chance = 0.5 - lift
        return Hypothesis("L0H0", candidate, 0.5, 0.4, 0.6, 10, 50, chance, lift,
                          lift / (1 - chance), 0.3, 0.001, 100, TESTED)  # fmt: skip

    found = [hyp("a", 0.1), hyp("b", 0.3), hyp("c", -0.1)]  # all pass the test
    out = rank_sites(found, 0.05, {"a": 0, "b": 1, "c": 2})
    assert [h.rank for h in out] == [2, 1, None]
    assert all(h.q_value < 0.05 for h in out)
