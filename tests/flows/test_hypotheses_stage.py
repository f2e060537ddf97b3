"""Stage hypotheses on the small run: the table, a run feature's FCR equal to the fcr stage's,
the cache, the CLI, verify and gc."""

import math

import polars as pl
import pytest

from inversescope.config import load_run_config
from inversescope.flows.cli import main
from inversescope.flows.stage import STAGE_ORDER, run_keys, run_stage
from inversescope.storage.artifacts import ArtifactStore
from inversescope.storage.layout import HYPOTHESES_SCHEMA, read_hypotheses, results_path
from inversescope.storage.queries import scan_hypotheses
from inversescope.storage.verify import collect_garbage, verify_workdir

FIRST_WORD = (
    "def first_word(text):\n    words = text.split()\n    return words[0] if words else None\n"
)


@pytest.fixture(scope="module")
def done(tmp_path_factory, small_overrides):
    """Every stage of the small run, Gaussian-weighted (every sample counts), with a user
    feature defined on nearly every sample."""
    root = tmp_path_factory.mktemp("hypotheses")
    (root / "first.py").write_text(FIRST_WORD)
    run = load_run_config(
        "ioi-tiny",
        [
            *small_overrides,
            "fcr.weighting=gaussian",
            f"features={{first: '{root}/first.py:first_word'}}",
        ],
    )
    work = root / "work"
    keys = run_keys(run)
    results = {n: run_stage(n, run, work, keys) for n in STAGE_ORDER}
    return run, work, keys, results


def test_the_table(done):
    run, work, keys, results = done
    table = read_hypotheses(results["hypotheses"].path)
    assert dict(table.schema) == HYPOTHESES_SCHEMA
    n_candidates = 5 + 9 + 18  # features (4 built-in, 1 user), slots, tokens and length
    assert table.height == 3 * n_candidates  # sites x candidates
    assert table.select(pl.struct("site", "candidate").n_unique()).item() == table.height
    assert set(table["site"]) == {"L0H1", "L1H0", "L1.attn"}
    statuses = set(table["status"])
    assert statuses <= {"tested", "alias", "constant", "undefined"} and "tested" in statuses
    # a target trained here reads <eos> first: the same token everywhere, reported, not ranked
    first = table.filter(pl.col("candidate") == "tok[0]")
    assert (first["status"] == "constant").all() and first["rank"].is_null().all()
    aliases = table.filter(pl.col("status") == "alias")
    assert ("slot:name.subject", "subject") in set(aliases.select("candidate", "alias_of").rows())
    tested = table.filter(pl.col("status") == "tested")
    assert tested["p_value"].is_between(0, 1).all() and tested["q_value"].is_not_null().all()
    assert (tested["q_value"] >= tested["p_value"]).all()
    manifest = ArtifactStore(work).require("hypotheses", keys["hypotheses"]).manifest
    assert manifest["metrics"]["candidates"] == n_candidates
    assert manifest["inputs"]["fcr"] == keys["fcr"]
    assert scan_hypotheses(work).collect().height == table.height


def test_a_run_features_fcr_is_the_fcr_stages(done):
    run, work, keys, results = done
    fcr = pl.read_parquet(results_path(results["fcr"].path)).rename({"feature": "candidate"})
    table = read_hypotheses(results["hypotheses"].path)
    both = fcr.join(table, on=["site", "candidate"], suffix="_h")
    assert both.height == 3 * 5
    for row in both.iter_rows(named=True):
        for col in ("fcr", "ci_low", "ci_high"):
            a, b = row[col], row[f"{col}_h"]
            assert a == b or (math.isnan(a) and math.isnan(b)), (row["site"], row["candidate"])
        assert (row["n_examples"], row["n_samples"]) == (row["n_examples_h"], row["n_samples_h"])
    # where every reference of the site contributes, chance is the fcr stage's too
    full = both.filter(pl.col("n_examples") == run.sample.n_examples)
    assert full.height > 0 and (full["chance"] == full["chance_h"]).all()


def test_rerun_is_cached_and_a_slot_setting_reruns_only_hypotheses(done):
    run, work, keys, results = done
    again = {n: run_stage(n, run, work, keys).status for n in STAGE_ORDER}
    assert set(again.values()) == {"cached"}
    stricter = run.model_copy(
        update={"hypotheses": run.hypotheses.model_copy(update={"alpha": 0.01})}
    )
    new = run_keys(stricter)
    assert {n for n in keys if keys[n] != new[n]} == {"hypotheses"}


def test_cli_prints_the_per_site_summary(done, capsys):
    run, work, keys, results = done
    assert main(["hypotheses", str(work), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "top 2 hypotheses per site of 32 candidates (q < 0.05" in out
    table = read_hypotheses(results["hypotheses"].path)
    if table["rank"].count() < 3:  # a site without a hypothesis is named
        assert "no hypothesis at q < 0.05:" in out
    assert main(["hypotheses", str(work), "--site", "L1H0"]) == 0
    assert main(["hypotheses", str(work), "--site", "L5H0"]) == 2
    err = capsys.readouterr().err
    assert "site 'L5H0' was not scored; accepted: L0H1, L1H0, L1.attn" in err
    assert main(["hypotheses", str(work), "--top", "0"]) == 2
    assert main(["hypotheses", str(work.parent / "nowhere")]) == 2


def test_verify_and_gc_keep_the_table(done):
    run, work, keys, results = done
    assert verify_workdir(work).ok
    report = collect_garbage(work, dry_run=True)
    assert not [r for r in report.removed if "hypotheses" in str(r.path)]
