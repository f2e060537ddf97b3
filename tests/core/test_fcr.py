"""FCR math against hand-computed cases."""

import numpy as np
import pytest

from inversescope.core.fcr import chance_level, estimate_fcr, kernel_weights


def test_hard_kernel_hand_computed():
    # example 0: reference "A"; accepted samples A, A, B -> 2/3 (the rejected "A" is ignored)
    # example 1: reference "B"; accepted samples B, None(undefined) -> 1/1
    # example 2: reference None -> left out
    # example 3: no accepted sample -> left out
    example = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    sample = np.array(["A", "A", "B", "A", "B", None, "A", "A"], dtype=object)
    ref = np.array(["A", "A", "A", "A", "B", "B", None, "A"], dtype=object)
    dist = np.array([0.01, 0.05, 0.02, 0.5, 0.0, 0.03, 0.01, 0.3])
    w = kernel_weights(dist, 0.1, "hard")
    est = estimate_fcr(example, sample, ref, w, n_boot=200)
    assert est.fcr == pytest.approx((2 / 3 + 1) / 2)
    assert est.n_examples == 2 and est.n_samples == 4
    assert est.ci_low <= est.fcr <= est.ci_high
    assert est.ci_low >= 2 / 3 - 1e-12 and est.ci_high <= 1 + 1e-12


def test_gaussian_kernel_weighs_every_sample():
    example = np.array([0, 0])
    sample = np.array(["A", "B"], dtype=object)
    ref = np.array(["A", "A"], dtype=object)
    dist = np.array([0.0, 0.1])
    w = kernel_weights(dist, 0.1, "gaussian")
    assert w == pytest.approx([1.0, np.exp(-0.5)])
    est = estimate_fcr(example, sample, ref, w)
    assert est.fcr == pytest.approx(1 / (1 + np.exp(-0.5)))


def test_nan_distance_weighs_nothing_and_empty_is_nan():
    assert kernel_weights(np.array([np.nan]), 0.1, "gaussian")[0] == 0
    est = estimate_fcr(
        np.array([0]), np.array(["A"], dtype=object), np.array(["A"], dtype=object), np.array([0.0])
    )
    assert np.isnan(est.fcr) and est.n_examples == 0
    with pytest.raises(ValueError, match="unknown weighting"):
        kernel_weights(np.array([0.1]), 0.1, "box")


def test_chance_level():
    # pool: A 50 %, B 25 %, C 25 %; references A and C -> (0.5 + 0.25) / 2
    assert chance_level(["A", "C", None], ["A", "A", "B", "C", None]) == pytest.approx(0.375)
    assert np.isnan(chance_level([None], ["A"]))


def test_bootstrap_interval_narrows_with_more_examples():
    rng = np.random.default_rng(0)

    def width(n):
        example = np.repeat(np.arange(n), 4)
        sample = rng.choice(["A", "B"], size=4 * n).astype(object)
        ref = np.array(["A"] * (4 * n), dtype=object)
        est = estimate_fcr(example, sample, ref, np.ones(4 * n), n_boot=500)
        return est.ci_high - est.ci_low

    assert width(400) < width(25)
