"""The Python API on a built run: results, samples, scoring a new feature with the pipeline's
own cache and FCR code, FCR at another ε, sampling for any activation."""

import linecache
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

import inversescope
from inversescope import labelling


@pytest.fixture(scope="module")
def run(small_run):
    return inversescope.open(small_run[0])


def notebook_function(source: str, cell: int):
    """A function defined in ``__main__`` from a cell's source, as Jupyter does (the kernel
    keeps each cell's source in ``linecache`` under a name of its own)."""
    filename = f"<ipython-input-{cell}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), namespace)
    return next(v for k, v in namespace.items() if callable(v) and not k.startswith("__"))


def test_open_finds_the_latest_complete_run(small_run, run):
    workdir, config, results = small_run
    assert run.key == results["fcr"].key
    assert run.config == config
    assert run.sites == ["L0H1", "L1H0", "L1.attn"]
    assert set(run.features) == {"subject", "object", "item", "place"}
    listed = inversescope.runs(workdir)
    assert listed["key"].to_list() == [run.key] and listed["preset"].to_list() == ["ioi-tiny"]
    assert inversescope.open(workdir, key=run.key[:6]).key == run.key
    with pytest.raises(ValueError, match="no complete run of preset 'icl-tiny'"):
        inversescope.open(workdir, preset="icl-tiny")


def test_open_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inversescope.open(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no complete run"):
        inversescope.open(tmp_path)


def test_samples_carry_distance_acceptance_and_labels(run):
    df = run.samples("L0H1", example=1)
    assert df.height == 4 and set(df["site"]) == {"L0H1"}
    assert {"text", "distance", "accepted", "subject", "subject_ref"} <= set(df.columns)
    d = df["distance"].to_numpy()
    assert (df["accepted"].to_numpy() == (np.nan_to_num(d, nan=np.inf) < run.epsilon)).all()
    wide = run.samples("L0H1", example=1, epsilon=1.5)
    assert wide["accepted"].sum() >= df["accepted"].sum()
    with pytest.raises(ValueError, match="site 'L3H3' was not sampled"):
        run.samples("L3H3")
    with pytest.raises(ValueError, match="example 99 was not sampled"):
        run.samples("L0H1", example=99)
    with pytest.raises(ValueError, match="unknown site 'head'"):
        run.samples("head")


def test_scoring_a_builtin_feature_gives_the_fcr_stages_rows(run):
    for feature in run.features:
        want = run.results().filter(pl.col("feature") == feature)
        assert run.score(feature).equals(want), feature


def test_a_notebook_function_caches_by_its_source_and_rescores_when_redefined(run, small_run):
    workdir = small_run[0]
    keys = {k: run.artifacts[k].key for k in labelling.LABEL_INPUTS}
    first = notebook_function(
        "def second_word(text):\n    words = text.split()\n"
        "    return words[1] if len(words) > 1 else None\n",
        1,
    )
    assert not labelling.cached(workdir, labelling.function_feature(first), keys)
    a = run.score(first)
    assert labelling.cached(workdir, labelling.function_feature(first), keys)
    path = labelling.cache_path(workdir, labelling.function_feature(first), keys)
    stamp = path.stat().st_mtime_ns
    assert run.score(first).equals(a) and path.stat().st_mtime_ns == stamp  # reused
    assert a["feature"].unique().to_list() == ["second_word"] and a.height == 3
    # the same name, another body: relabelled, rescored
    second = notebook_function("def second_word(text):\n    return len(text) % 2\n", 2)
    b = run.score(second)
    assert labelling.cache_path(workdir, labelling.function_feature(second), keys) != path
    assert b["feature"].to_list() == a["feature"].to_list()
    assert not b["chance"].equals(a["chance"])
    # the same as a feature named in the run config would get: the FCR of the label stage
    lengths = run.score({"parity": lambda t: len(t) % 2})
    assert lengths["chance"].equals(b["chance"]) and lengths["fcr"].equals(b["fcr"])


def test_score_refuses_what_it_cannot_score(run):
    with pytest.raises(ValueError, match="feature name 'subject' is a feature of this run"):
        run.score({"subject": lambda t: t[:3]})
    with pytest.raises(ValueError, match="unknown feature 'nope'"):
        run.score("nope")
    with pytest.raises(inversescope.errors.FeatureError, match="feature 'boom'.*ZeroDivision"):
        run.score({"boom": lambda t: 1 / 0})
    with pytest.raises(ValueError, match="epsilon=3"):
        run.score("subject", epsilon=3)


def test_fcr_at_another_epsilon_and_the_curve(run, tmp_path):
    wide = run.fcr_at(0.5)
    assert set(wide["epsilon"]) == {0.5}
    assert (wide["refusal_rate"] <= run.results()["refusal_rate"]).all()
    curve = run.fcr_curve([0.1, 0.5], plot=tmp_path / "curve.png")
    assert curve.height == 2 * run.results().height
    at = curve.filter(pl.col("epsilon") == 0.1).drop("epsilon")
    assert at.equals(run.results().drop("epsilon"))
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_sampling_for_the_activation_of_a_prompt(run):
    prompt = "When Mary and John went to the store, John gave a drink to"
    z = run.activation(prompt, "L0H1")
    assert z.shape == (32,) and np.isfinite(z).all()
    assert np.allclose(run.activation([prompt, prompt], "L0H1")[1], z)
    df = run.sample(z, "L0H1", n=6, seed=3)
    assert df.height == 6 and {"text", "distance", "accepted", "subject"} <= set(df.columns)
    assert df["distance"].is_sorted(nulls_last=True)
    again = run.sample(prompt, "L0H1", n=6, seed=3)
    assert again["text"].to_list() == df["text"].to_list()
    # each distance is the sample's own activation measured against z
    texts = [t for t in df["text"].to_list() if t]
    if texts:
        own = run.activation(texts, "L0H1")
        cos = own @ z / (np.linalg.norm(own, axis=1) * np.linalg.norm(z))
        np.testing.assert_allclose(
            df.filter(pl.col("text") != "")["distance"].to_numpy(), 1 - cos, atol=1e-5
        )
    with pytest.raises(ValueError, match="n=0"):
        run.sample(z, "L0H1", n=0)
    with pytest.raises(ValueError, match="shape"):
        run.sample(z[:5], "L0H1")


def test_the_api_starts_no_prefect_server(small_run):
    code = (
        "import sys, inversescope\n"
        f"run = inversescope.open({str(small_run[0])!r})\n"
        "run.results(); run.samples('L0H1'); run.score(lambda t: len(t) // 7, name='len7')\n"
        "run.sample('When Mary and John went', 'L0H1', n=2)\n"
        "assert 'prefect' not in sys.modules, 'prefect was imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
