"""Hypotheses: candidate features ranked per site against chance, with a multiple-testing
correction.

Every candidate is a feature: a label per input, or undefined. Inputs are given once, as the
rows of a code matrix ``codes`` (C candidates x N distinct inputs, -1 = undefined; see
``encode_labels``); a site names, for each of its samples, the input it is and the input its
reference is, plus the sample's kernel weight. For one (site, candidate) pair:

- FCR, its interval and n come from ``core.fcr`` (``per_example_consistency``,
  ``bootstrap_ci``) on exactly the arrays ``estimate_fcr`` builds, so a candidate that is a
  run feature gets the fcr stage's numbers to the bit;
- chance is ``chance_level`` over the references that FCR averages, against the pool (the
  prior's test prompts); lift = FCR - chance; normalised lift = lift / (1 - chance): 1 when
  every sample shares its reference's label, 0 at chance;
- a candidate constant over the pool (chance 1) is reported as ``constant``, without a test;
- the p-value (below) is one-sided; q-values are Benjamini-Hochberg over every tested pair of
  the run; a site's hypotheses are the pairs with q < alpha and FCR > chance, ranked by
  normalised lift.

The test
--------
Null hypothesis: the site tells the generator nothing about the candidate at the reference,
so which reference label goes with which example's samples is exchangeable. The statistic is
the FCR itself; its null distribution is the FCR after permuting the reference labels among
the examples that contribute, each example keeping its samples and their weights. The
permutation mean (``null_fcr``, exact: the mean of the example x reference share matrix) is
the FCR of samples unrelated to their reference.

Why a permutation test over references, and not a bootstrap of FCR - chance:

- chance is what samples from the *prior* would score. The samples come from a generator
  whose marginal is not the prior: it refuses, breaks prompts and over-produces frequent
  labels. A generator that over-produces the commonest name beats chance at every site
  without reading the site at all, and a bootstrap test of FCR - chance would call that a
  discovery. Permuting references keeps the samples' own marginal, so only the link between
  a reference and its samples counts. The shuffled control (each sample given to a random
  reference) is exactly this null, so the test is calibrated under it by construction.
- references are the unit: the samples of one reference share its activation and are not
  independent draws (the fcr stage's interval resamples references for the same reason).
- it needs no distributional assumption, and ties and discrete labels are handled exactly.

Monte Carlo: permutations are drawn sequentially (Besag & Clifford 1991, "Sequential Monte
Carlo p-values"): stop at the ``stop_after``-th permutation with FCR >= the observed one
(after L permutations: p = stop_after / L), or after ``permutations`` of them with g such
(p = (g + 1) / (permutations + 1)). Both are valid p-values (P(p <= a) <= a), and a clearly
null pair costs a few hundred permutations while a strong one costs ``permutations``. The
smallest p is 1 / (permutations + 1): BH passes a pair only if p <= alpha k / m (k passing
pairs of m tested), so ``permutations`` must exceed m / (alpha k); the default 10,000 lets a
lone hypothesis through among 500 tested pairs and ten among 5,000. Each pair draws from its
own generator, seeded by (seed, site, candidate): its p-value does not change when other
candidates or sites are added. BH assumes the p-values are independent or positively
dependent (PRDS, Benjamini & Yekutieli 2001); candidates of one site are scored on the same
samples, so they are dependent, positively in the usual case (related labels agree together).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from pydantic import Field

from inversescope.core.config import StageConfig
from inversescope.core.fcr import bootstrap_ci, chance_level, per_example_consistency

TESTED, ALIAS, CONSTANT, UNDEFINED = "tested", "alias", "constant", "undefined"
_FIRST_ROUND = 256  # permutations in the first round; each later round doubles


class HypothesesConfig(StageConfig):
    """Scoring candidate features on every site: the permutation test and the threshold."""

    permutations: int = Field(
        10_000,
        ge=99,
        description="Most permutations per (site, candidate); the smallest p-value is "
        "1/(permutations+1). Raise it when very many pairs are tested.",
    )
    stop_after: int = Field(
        10,
        ge=1,
        description="Stop permuting a pair once this many permutations reach its FCR "
        "(sequential Monte Carlo p-value, Besag & Clifford 1991).",
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="A hypothesis is ranked when its q-value is below this."
    )


@dataclass(frozen=True)
class Hypothesis:
    """One (site, candidate) pair."""

    site: str
    candidate: str
    fcr: float
    ci_low: float
    ci_high: float
    n_examples: int  # references that contribute
    n_samples: int  # samples with positive weight and a defined label among them
    chance: float
    lift: float
    normalised_lift: float
    null_fcr: float  # the FCR expected with samples unrelated to their reference
    p_value: float
    n_permutations: int
    status: str  # tested | alias | constant | undefined
    alias_of: str | None = None  # the candidate with the same labels on every input
    q_value: float = math.nan
    rank: int | None = None  # 1 = best hypothesis of its site (q < alpha only)

    def to_row(self) -> dict:
        return asdict(self)


def encode_labels(columns: Sequence[Sequence[object]]) -> np.ndarray:
    """(C, N) int64 codes of C label columns over the same N inputs: equal labels of one
    column share a code, ``None`` is -1."""
    out = np.full((len(columns), len(columns[0]) if columns else 0), -1, dtype=np.int64)
    for c, values in enumerate(columns):
        index: dict[object, int] = {}
        out[c] = [-1 if v is None else index.setdefault(v, len(index)) for v in values]
    return out


def alias_representatives(codes: np.ndarray) -> np.ndarray:
    """For each row of ``codes``, the first row that splits the inputs into the same classes
    (same undefined inputs, a one-to-one map between labels): such candidates score the same
    everywhere."""
    first: dict[bytes, int] = {}
    reps = np.empty(len(codes), dtype=np.int64)
    for c, row in enumerate(codes):
        _, where, inverse = np.unique(row, return_index=True, return_inverse=True)
        order = np.empty(len(where), dtype=np.int64)
        order[np.argsort(where)] = np.arange(len(where))  # classes by first appearance
        canonical = np.where(row < 0, -1, order[inverse.reshape(-1)])
        reps[c] = first.setdefault(canonical.tobytes(), c)
    return reps


def pair_seed(seed: int, site: str, candidate: str) -> int:
    """The seed of one pair's permutations: it depends on nothing else."""
    digest = hashlib.sha256(f"{seed}/{site}/{candidate}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def permutation_p_value(
    share: np.ndarray, reference: np.ndarray, rng: np.random.Generator, max_perm: int, stop: int
) -> tuple[float, int]:
    """(p-value, permutations drawn) of FCR = mean_i share[i, reference[i]] under permutations
    of ``reference`` (share: (E, U) per-example weighted share of each reference label;
    reference: (E,) column of each example's own label), sequential as the module says."""
    n_ex, n_col = share.shape
    if len(np.unique(reference)) < 2:
        return 1.0, 0  # every permutation gives the observed FCR
    flat = share.ravel()
    base = np.arange(n_ex) * n_col  # (E,)
    observed = flat[base + reference].sum()
    floor = observed - 1e-9 * max(1.0, abs(observed))  # sums in another order: rounding
    done, hits, size = 0, 0, _FIRST_ROUND
    while done < max_perm:
        n = min(size, max_perm - done)
        perms = rng.permuted(np.tile(reference, (n, 1)), axis=1)  # (n, E)
        reached = np.cumsum(flat[base + perms].sum(axis=1) >= floor)  # (n,)
        if hits + reached[-1] >= stop:
            at = int(np.searchsorted(reached, stop - hits)) + 1
            return stop / (done + at), done + at
        hits += int(reached[-1])
        done += n
        size *= 2
    return (hits + 1) / (max_perm + 1), max_perm


def _labels(codes: np.ndarray) -> list[int | None]:
    return [None if c < 0 else c for c in codes.tolist()]


def score_pair(
    site: str,
    candidate: str,
    example: np.ndarray,
    weight: np.ndarray,
    sample_codes: np.ndarray,
    reference_codes: np.ndarray,
    pool: list[int | None],
    config: HypothesesConfig,
    n_boot: int,
    level: float,
    seed: int,
) -> Hypothesis:
    """One pair from per-sample arrays (in the fcr stage's order: example, then sample):
    reference id, kernel weight, the sample's label code and its reference's (-1 undefined);
    ``pool``: the candidate's labels over the prior pool."""
    defined = (sample_codes >= 0) & (reference_codes >= 0)
    match = (defined & (sample_codes == reference_codes)).astype(np.float64)
    ids, share, count = per_example_consistency(example, match, defined, weight)
    nan = math.nan
    if len(share) == 0:
        return Hypothesis(
            site, candidate, nan, nan, nan, 0, 0, nan, nan, nan, nan, nan, 0, UNDEFINED
        )
    fcr = float(share.mean())
    low, high = bootstrap_ci(share, n_boot, level, seed)
    # each contributing example's own label (every sample of an example carries it)
    row = np.searchsorted(ids, example)  # (S,)
    inside = (row < len(ids)) & (ids[np.minimum(row, len(ids) - 1)] == example) & defined
    own = np.zeros(len(ids), dtype=np.int64)
    own[row[inside]] = reference_codes[inside]
    chance = chance_level(_labels(own), pool)
    common = dict(
        site=site,
        candidate=candidate,
        fcr=fcr,
        ci_low=low,
        ci_high=high,
        n_examples=len(share),
        n_samples=int(count.sum()),
        chance=chance,
        lift=fcr - chance,
    )
    if chance >= 1.0:
        return Hypothesis(
            **common,
            normalised_lift=nan,
            null_fcr=nan,
            p_value=nan,
            n_permutations=0,
            status=CONSTANT,
        )
    levels, column = np.unique(own, return_inverse=True)  # (U,), (E,)
    col = np.searchsorted(levels, sample_codes)
    hit = inside & (col < len(levels))
    hit[hit] = levels[col[hit]] == sample_codes[hit]
    w = np.where(inside, weight, 0.0)
    total = np.bincount(row[inside], weights=w[inside], minlength=len(ids))  # (E,)
    cells = np.bincount(
        row[hit] * len(levels) + col[hit], weights=w[hit], minlength=len(ids) * len(levels)
    )
    table = cells.reshape(len(ids), len(levels)) / total[:, None]  # (E, U)
    null = float(table[:, column].mean())
    rng = np.random.default_rng(pair_seed(seed, site, candidate))
    p, n_perm = permutation_p_value(table, column, rng, config.permutations, config.stop_after)
    return Hypothesis(
        **common,
        normalised_lift=(fcr - chance) / (1 - chance),
        null_fcr=null,
        p_value=p,
        n_permutations=n_perm,
        status=TESTED,
    )


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of ``p``; NaN (not tested) stays NaN and is not counted."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(len(p), np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    if len(tested) == 0:
        return q
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = p[order] * len(tested) / np.arange(1, len(tested) + 1)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


def rank_sites(hypotheses: list[Hypothesis], alpha: float, priority: dict[str, int]):
    """The hypotheses with q-values and, per site, ranks of the tested pairs with q < alpha and
    FCR above chance (the test compares with ``null_fcr``, which a generator that under-produces
    a label puts below chance): by normalised lift, then q, then samples, then ``priority``
    (lower first: the order in which candidates were given), then name."""
    q = benjamini_hochberg(
        np.array([h.p_value if h.status == TESTED else np.nan for h in hypotheses])
    )
    out = [replace(h, q_value=float(v)) for h, v in zip(hypotheses, q, strict=True)]
    by_rep = {(h.site, h.candidate): h.q_value for h in out}
    out = [
        replace(h, q_value=by_rep[(h.site, h.alias_of)]) if h.status == ALIAS else h for h in out
    ]
    ranked: dict[str, list[int]] = {}
    for i, h in enumerate(out):
        if h.status == TESTED and h.q_value < alpha and h.lift > 0:
            ranked.setdefault(h.site, []).append(i)
    for rows in ranked.values():
        rows.sort(
            key=lambda i: (
                -out[i].normalised_lift,
                out[i].q_value,
                -out[i].n_samples,
                priority[out[i].candidate],
                out[i].candidate,
            )
        )
        for r, i in enumerate(rows, start=1):
            out[i] = replace(out[i], rank=r)
    return out


@dataclass(frozen=True)
class SiteSamples:
    """One site's samples in the fcr stage's order (example, then sample index): the reference
    id, the kernel weight, and the rows of the code matrix that the sample and its reference
    are."""

    example: np.ndarray  # (S,) int
    weight: np.ndarray  # (S,) float
    sample_input: np.ndarray  # (S,) int: row of the sample's text in the inputs
    reference_input: np.ndarray  # (S,) int: row of its reference's text


def score_run(
    sites: dict[str, SiteSamples],
    codes: np.ndarray,
    names: Sequence[str],
    pool_inputs: np.ndarray,
    config: HypothesesConfig,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[Hypothesis]:
    """Every candidate (rows of ``codes``, named by ``names``, in priority order) on every
    site, with q-values over all tested pairs and per-site ranks. ``pool_inputs``: the rows of
    the prior's pool (chance). Candidates with the same classes on every input are scored once
    and reported as aliases of the first."""
    reps = alias_representatives(codes)
    pools = {int(c): _labels(codes[c, pool_inputs]) for c in np.unique(reps)}
    out: list[Hypothesis] = []
    for site, s in sites.items():
        scored: dict[int, Hypothesis] = {}
        for c in range(len(names)):
            rep = int(reps[c])
            if rep != c:
                h = scored[rep]
                out.append(replace(h, candidate=names[c], status=ALIAS, alias_of=names[rep]))
                continue
            scored[c] = score_pair(
                site,
                names[c],
                s.example,
                s.weight,
                codes[c, s.sample_input],
                codes[c, s.reference_input],
                pools[c],
                config,
                n_boot,
                level,
                seed,
            )
            out.append(scored[c])
    return rank_sites(out, config.alpha, {n: i for i, n in enumerate(names)})


def shuffled_control(sites: dict[str, SiteSamples], seed: int) -> dict[str, SiteSamples]:
    """The false-discovery control: each site's samples (with their weights) handed to
    references at random, as many to each as before. Nothing links a reference to its
    samples, so nothing should pass."""
    out = {}
    for site, s in sites.items():
        rng = np.random.default_rng(pair_seed(seed, site, "shuffled-control"))
        order = rng.permutation(len(s.example))
        reference_of = dict(zip(s.example.tolist(), s.reference_input.tolist(), strict=False))
        example = s.example[order]
        out[site] = SiteSamples(
            example,
            s.weight,
            s.sample_input,
            np.array([reference_of[e] for e in example.tolist()], dtype=np.int64),
        )
    return out
