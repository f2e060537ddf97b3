"""Training pairs of the conditional generator (``core.pairs.ActivationBatches``): which
(row, site) pairs a visit to a row chunk yields, and that its position survives a checkpoint."""

from collections import Counter

import numpy as np
import pytest

from inversescope.config import check_run, load_run_config
from inversescope.core.pairs import ActivationBatches
from inversescope.core.tokenizer import train_bpe_tokenizer
from inversescope.flows import stage_controls

N_ROWS, CHUNK, SITES, BATCH = 96, 32, ["a", "b", "c", "d", "e"], 8
TEXTS = [f"prompt number {i}" + " and more" * (i % 6) for i in range(N_ROWS)]  # 6 lengths


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, 300)


def _read(site: str, start: int, stop: int) -> np.ndarray:
    """Rows that name themselves: column 0 the row, column 1 the site's index."""
    rows = np.arange(start, min(stop, N_ROWS), dtype=np.float32)
    return np.stack([rows, np.full_like(rows, SITES.index(site))], axis=1)  # (R, 2)


def _batches(tokenizer, sites_per_row=None, seed=0, length_groups=None) -> ActivationBatches:
    return ActivationBatches(
        _read,
        N_ROWS,
        CHUNK,
        SITES,
        TEXTS,
        tokenizer,
        BATCH,
        seed,
        None,
        sites_per_row,
        length_groups,
    )


def _pairs(batch) -> list[tuple[int, int]]:
    z = batch["z"].numpy()
    assert (z[:, 1] == batch["site_idx"].numpy()).all()  # z is the row at its own site
    return [(int(r), int(s)) for r, s in z]


def test_a_chunk_visit_pairs_every_row_with_every_site_by_default(tokenizer):
    it = _batches(tokenizer)
    per_chunk = CHUNK * len(SITES) // BATCH  # 20 batches
    pairs = [p for _ in range(per_chunk) for p in _pairs(next(it))]
    rows = {r for r, _ in pairs}
    assert len(rows) == CHUNK and len(set(pairs)) == len(pairs) == CHUNK * len(SITES)
    assert {r // CHUNK for r in rows} == {min(rows) // CHUNK}  # one chunk at a time


@pytest.mark.parametrize("m", [1, 2])
def test_sites_per_row_pairs_each_row_with_m_sites_of_its_own(tokenizer, m):
    it = _batches(tokenizer, m)
    per_chunk = CHUNK * m // BATCH
    visits = []
    for _ in range(N_ROWS // CHUNK):  # one visit to every chunk
        pairs = [p for _ in range(per_chunk) for p in _pairs(next(it))]
        per_row = Counter(r for r, _ in pairs)
        assert len(per_row) == CHUNK and set(per_row.values()) == {m}
        assert len(set(pairs)) == len(pairs)  # m distinct sites per row
        visits.append(pairs)
    rows = {r for pairs in visits for r, _ in pairs}
    assert rows == set(range(N_ROWS))  # the budget of one default visit meets every prompt
    sites = Counter(s for pairs in visits for _, s in pairs)
    assert set(sites) == set(range(len(SITES)))  # rows draw their own sites


def test_a_checkpoint_inside_a_chunk_resumes_the_same_batches(tokenizer):
    it = _batches(tokenizer, 2, seed=3)
    for _ in range(5):
        next(it)
    state = it.state_dict()
    want = [_pairs(next(it)) for _ in range(12)]  # runs into the next chunk
    again = _batches(tokenizer, 2, seed=99)
    again.load_state_dict(state)
    assert [_pairs(next(again)) for _ in range(12)] == want


def test_length_groups_batch_prompts_of_one_length_and_keep_every_pair(tokenizer):
    per_chunk = CHUNK * len(SITES) // BATCH
    positions, spread = {}, {}
    for groups in (None, 4):
        it = _batches(tokenizer, length_groups=groups)
        batches = [next(it) for _ in range(per_chunk)]
        pairs = [p for b in batches for p in _pairs(b)]
        assert len(set(pairs)) == len(pairs) == CHUNK * len(SITES)  # one visit, every pair
        positions[groups] = sum(b["input_ids"].numel() for b in batches)
        lengths = [b["attention_mask"].sum(1) for b in batches]  # (B,) tokens of each prompt
        spread[groups] = sum(int(n.max() - n.min()) for n in lengths) / per_chunk
    assert positions[4] < 0.85 * positions[None]
    assert spread[4] < 0.5 * spread[None]
    for b in batches:  # labels are the tokens, padding masked out, as lm_batch builds them
        assert ((b["labels"] == -100) == (b["attention_mask"] == 0)).all()


def test_length_groups_resume_from_a_checkpoint(tokenizer):
    it = _batches(tokenizer, 2, seed=5, length_groups=3)
    for _ in range(7):
        next(it)
    state = it.state_dict()
    want = [_pairs(next(it)) for _ in range(10)]
    again = _batches(tokenizer, 2, seed=0, length_groups=3)
    again.load_state_dict(state)
    assert [_pairs(next(again)) for _ in range(10)] == want


def test_sites_per_row_below_one_is_refused(tokenizer):
    with pytest.raises(ValueError, match="sites_per_row=0"):
        _batches(tokenizer, 0)


@pytest.mark.parametrize("m", [5, 6])
def test_sites_per_row_at_or_above_the_sites_pairs_every_site(tokenizer, m):
    # a run that trains on fewer sites than the preset's sites_per_row: every row at every site
    default, capped = _batches(tokenizer), _batches(tokenizer, m)
    want = [_pairs(next(default)) for _ in range(30)]  # past the first chunk
    assert [_pairs(next(capped)) for _ in range(30)] == want


def test_pair_options_are_in_the_controls_key_only_when_set(small):
    unset = ["controls.sites_per_row=null", "controls.length_groups=null"]
    default = load_run_config("ioi-tiny", [*small, *unset])
    config = stage_controls.config_of(default)
    assert "sites_per_row" not in config and "length_groups" not in config  # keys as before them
    four = load_run_config("ioi-tiny", [*small, *unset, "controls.sites_per_row=4"])
    assert stage_controls.config_of(four)["sites_per_row"] == 4
    grouped = load_run_config("ioi-tiny", [*small, *unset, "controls.length_groups=8"])
    assert stage_controls.config_of(grouped)["length_groups"] == 8
    # the preset's own values, and a run on fewer sites than sites_per_row is no error
    preset = load_run_config("ioi-tiny", small)
    assert stage_controls.config_of(preset)["sites_per_row"] == 4
    assert stage_controls.config_of(preset)["length_groups"] == 8
    check_run(load_run_config("ioi-tiny", [*small, "controls.sites_per_row=21"]), probe=False)
